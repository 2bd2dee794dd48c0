"""TuneLab's benchmarks, each a module run from the repository root:
`python -m benchmarks.bench_train`, `python -m benchmarks.run_all`, ... (see README.md here).
appkit.py holds what the benchmarks that drive the app share."""
