"""tests/system imports the chart helpers as `helm` from this folder; they live in tests/support/helm.py."""

from tests.support.helm import render_chart_text

__all__ = ["render_chart_text"]
