"""The HTTP surface: the JSON API, the page and its sign-in, the /v1/ pass-through, the OpenAPI
description, /healthz and /metrics; each a blueprint over the domain's parts."""

from __future__ import annotations

from flask import current_app

from ..domain import Panel

EXTENSION = "vastpanel"  # app.extensions[EXTENSION] is the app's Panel


def get_panel() -> Panel:
    """Return the domain's parts of the app serving this request."""
    return current_app.extensions[EXTENSION]
