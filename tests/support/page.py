"""Helpers for the page tests: read the CSRF token, sign a test client in, read the card."""

from __future__ import annotations

import html as html_lib
import re

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


RAW_ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d")


def text_of(fragment: str) -> str:
    """Return the text a reader sees in an HTML fragment: tags dropped, spaces collapsed."""
    joined = fragment.replace("<wbr>", "")  # a line break opportunity, no space
    return " ".join(html_lib.unescape(re.sub(r"<[^>]+>", " ", joined)).split())


def fact(page_html: str, label: str) -> str:
    """Return the text of a card fact: the first <dd> after <dt>label</dt>."""
    match = re.search(rf"<dt>{re.escape(label)}</dt>\s*<dd[^>]*>(.*?)</dd>", page_html, re.S)
    assert match, f"no fact {label!r}"
    return text_of(match.group(1))


def fact_details(page_html: str, label: str) -> list[str]:
    """Return the quieter lines (<dd class="sub">) of a card fact."""
    match = re.search(
        rf"<dt>{re.escape(label)}</dt>\s*<dd[^>]*>.*?</dd>((?:\s*<dd class=\"sub\"[^>]*>.*?</dd>)*)",
        page_html,
        re.S,
    )
    assert match, f"no fact {label!r}"
    return [text_of(d) for d in re.findall(r"<dd[^>]*>(.*?)</dd>", match.group(1), re.S)]


def signed_in_client(app):
    """Return a fresh test client with a signed-in admin session."""
    client = app.test_client()
    response = sign_in(client)
    assert response.status_code == 303, response.get_data(as_text=True)
    return client
