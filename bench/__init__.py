"""Performance benchmarks of esta (``python bench/run.py``); see bench/run.py."""
