"""Reads from the instance (its health URL): an address the panel does not control."""

from __future__ import annotations

import requests

HEALTH_TIMEOUT_S = (3.0, 5.0)  # connect, read


def fetch_health(session: requests.Session, url: str) -> bool:
    """Tell whether the instance's health URL answers 200 right now."""
    try:
        response = session.get(url, timeout=HEALTH_TIMEOUT_S, allow_redirects=False)
    except requests.RequestException:
        return False
    response.close()
    return response.status_code == 200
