"""Prefect flows: orchestration only, the I/O lives in ``tasks``."""
