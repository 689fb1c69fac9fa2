"""A body sent in chunks (no Content-Length) over the 64 KiB limit is 413, on the API and the
page alike, never cut to the limit and read as if it were whole (issue 23 §12).

gunicorn marks its bodies `wsgi.input_terminated` (it ends a chunked body itself), and so does
each request here; tests/test_hostile_clients.py sends real chunks to the real gunicorn.
"""

from __future__ import annotations

import io

import pytest

from support.page import csrf_token
from vastpanel import MAX_BODY_BYTES

CHUNKED = {"Transfer-Encoding": "chunked", "Content-Type": "application/json"}


def chunked_post(client, path: str, body: bytes, **headers: str):
    return client.post(
        path,
        input_stream=io.BytesIO(body),
        headers={**CHUNKED, **headers},
        environ_overrides={"wsgi.input_terminated": True},
    )


def json_of_size(size: int) -> bytes:
    """A JSON object of exactly size bytes (whitespace inside it)."""
    return b"{" + b" " * (size - 2) + b"}"


@pytest.mark.parametrize("path", ["/infra/vast/activity", "/infra/vast/keepalive"])
def test_a_chunked_api_body_over_the_limit_is_413(client, path):
    answer = chunked_post(client, path, json_of_size(100_000))
    assert answer.status_code == 413, answer.json
    assert f"at most {MAX_BODY_BYTES} bytes" in answer.json["detail"]
    one_over = chunked_post(client, path, json_of_size(MAX_BODY_BYTES + 1))
    assert one_over.status_code == 413


def test_a_chunked_body_up_to_the_limit_is_read_whole(client, panel):
    answer = chunked_post(client, "/infra/vast/activity", json_of_size(MAX_BODY_BYTES))
    assert answer.status_code == 200, answer.json
    minutes = b'{"minutes": 5' + b" " * 100 + b"}"
    kept = chunked_post(client, "/infra/vast/keepalive", minutes)
    assert kept.status_code == 409  # read whole: the field was found (no session is open)


def test_a_chunked_form_over_the_limit_is_413_before_sign_in(app):
    client = app.test_client()
    token = csrf_token(client)
    form = f"csrf_token={token}&key=".encode() + b"k" * 100_000
    answer = chunked_post(
        client, "/signin", form, **{"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert answer.status_code == 413
