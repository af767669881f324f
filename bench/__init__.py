"""Benchmarks: each script prints a table of medians and ratios against a
baseline measured in the same run."""
