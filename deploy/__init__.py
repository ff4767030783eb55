"""Deploying packages to boards: SSH, board bootstrap, the emulated board, RPC sessions, remote measurement."""
