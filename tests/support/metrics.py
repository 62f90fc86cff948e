"""What a server's /metrics says (Prometheus text)."""

from __future__ import annotations

import re

import httpx


def metric(text: str, name: str, labels: str = "") -> float:
    """One sample of `text` by name and labels (as written, e.g. 'method="PATCH",status="204"')."""
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" ([0-9.e+-]+|NaN)$"
    match = re.search(pattern, text, flags=re.MULTILINE)
    assert match is not None, f"{name}{{{labels}}} is not in /metrics"
    return float(match.group(1))


def server_metric(url: str, name: str, labels: str = "") -> float:
    """metric() of the server at url, read now."""
    return metric(httpx.get(f"{url}/metrics", timeout=10).text, name, labels)
