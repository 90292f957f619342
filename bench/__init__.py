"""Benchmarks (throughput, memory, input pipeline): run as `python -m bench.<name>`, never in tests."""
