"""The compilation pipeline: ingest, quantize, build, run and compare."""
