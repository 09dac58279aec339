"""The system tests: the chart's workloads run as processes (README.md)."""
