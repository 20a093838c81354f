"""Benchmarks that print images/s side by side (`alexkit bench ...`); timings never live in tests."""
