"""Prometheus metrics for tollway (``pip install 'tollway[metrics]'``): `Metrics` holds the
series in a registry of its own, `metrics_app` serves them to mount in any ASGI app, and
`render` gives the text format. See docs/metrics.md for every metric and its labels."""

from __future__ import annotations

from tollway.metrics.app import metrics_app, render
from tollway.metrics.core import Metrics
from tollway.metrics.observer import DecisionObserver

__all__ = ["DecisionObserver", "Metrics", "metrics_app", "render"]
