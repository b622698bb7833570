"""Benchmark suites: each measures side by side in one run and writes JSON (+ markdown, plots)."""
