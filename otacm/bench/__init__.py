"""Benchmarks: each measures otacm against a raw baseline run in the same process and run."""
