"""Speed benchmarks of kadapter (`python benchmarks/run.py --quick`; results in RESULTS.md)."""
