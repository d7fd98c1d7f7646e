"""Benchmarks (not tests): `make bench` runs `python -m bench.run` and prints a table."""
