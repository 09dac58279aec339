"""Observability (docs/monitoring.md): the run history (`runs`), the `status` view and the Prometheus exporter."""
