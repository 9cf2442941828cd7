"""The metric names the Grafana dashboard (deploy/grafana/dashboards) queries."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy/grafana/dashboards/routeworker.json"
METRIC = re.compile(r"\brouteworker_[a-z_]+\b")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def queried_metrics() -> set[str]:
    """Every metric name any panel's query uses."""
    return {name for p in dashboard()["panels"] for t in p["targets"] for name in METRIC.findall(t["expr"])}
