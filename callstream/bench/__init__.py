"""Benchmarks behind `callstream bench …`; figures are reported in the README."""
