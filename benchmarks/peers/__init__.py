"""Benchmarks of TuneLab against other fine-tuning tools, each in its own environment
(see bench_peers.py and llamafactory_venv.sh here)."""
