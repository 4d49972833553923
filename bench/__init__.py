"""Benchmark harness: tollway against its peers and the physical floor.

Run ``python -m bench.run`` (see ``bench/README.md``).
"""
