"""Benchmarks that run in the sealed lab (``scripts/bench.sh NAME``)."""
