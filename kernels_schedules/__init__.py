"""TE/TIR kernels and default schedules."""
