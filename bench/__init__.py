"""Benchmarks of ckptwatch (see bench/README.md); run with ``python -m bench.run``."""
