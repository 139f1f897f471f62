"""The benchmarks, run as modules from the repository root (`python -m
benchmarks.bench_inmemory`, ...; `make bench` runs them all): each measures its contenders
side by side in one run. The reference contenders come from tests.support.reference."""
