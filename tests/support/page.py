"""Helpers for the page tests: read the CSRF token, sign a test client in."""

from __future__ import annotations

from conftest import CONTROL_KEY
from support.liveserver import TOKEN

HTMX = {"HX-Request": "true"}


def csrf_token(client, path: str = "/signin") -> str:
    """Return the CSRF token a page of the session shows."""
    response = client.get(path)
    match = TOKEN.search(response.get_data(as_text=True))
    assert match, f"no csrf_token on {path} ({response.status_code})"
    return match.group(1)


def sign_in(client, key: str = CONTROL_KEY):
    """Sign the client in with the admin key and return the response."""
    return client.post("/signin", data={"csrf_token": csrf_token(client), "key": key})


def signed_in_client(app):
    """Return a fresh test client with a signed-in admin session."""
    client = app.test_client()
    response = sign_in(client)
    assert response.status_code == 303, response.get_data(as_text=True)
    return client
