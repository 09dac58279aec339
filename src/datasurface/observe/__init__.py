"""Observability (contract §6): the run history (`runs`), the `status` view and the Prometheus exporter."""
