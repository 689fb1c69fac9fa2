"""Every log line is one line, whatever a request put in it (issue 23 §10).

The attack: `%0a` in a path became a line feed in the access log, followed by a forged line in
the panel's audit-line format. Here through the formatter gunicorn.conf.py gives every line,
the panel's own lines, and the dev server's filter; tests/test_hostile_clients.py sends it to
the real gunicorn.
"""

from __future__ import annotations

import io
import logging
import sys

import pytest

from vastpanel.logs import LOG_FORMAT, StripQueryString, UtcFormatter, escape_controls

FORGED = "2024-05-01T12:00:00.000Z INFO vastpanel event=power_off_complete actor=api"


@pytest.fixture
def panel_lines():
    """The "vastpanel" logger's lines as gunicorn.conf.py formats them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(UtcFormatter(LOG_FORMAT))
    logger = logging.getLogger("vastpanel")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(old_level)


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("/a\nb", "/a\\nb"),
        ("/a\r\nb", "/a\\r\\nb"),
        ("tab\there", "tab\\there"),
        ("bell\x07 esc\x1b[31m del\x7f", "bell\\x07 esc\\x1b[31m del\\x7f"),
        ("nel\x85 ls\u2028 ps\u2029", "nel\\x85 ls\\u2028 ps\\u2029"),
        ("plain é ü 😀 /v1/models", "plain é ü 😀 /v1/models"),
    ],
)
def test_control_characters_are_written_as_escapes(text, escaped):
    assert escape_controls(text) == escaped


def test_a_forged_line_in_a_message_stays_on_its_own_line():
    record = logging.LogRecord(
        "gunicorn.access", logging.INFO, __file__, 1, '%s "GET %s HTTP/1.1" 404', None, None
    )
    record.args = ("203.0.113.9", f"/x\n{FORGED}")
    line = UtcFormatter(LOG_FORMAT).format(record)
    assert "\n" not in line and line.endswith(f'"GET /x\\n{FORGED} HTTP/1.1" 404')


def test_a_traceback_keeps_its_lines():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "vastpanel", logging.ERROR, __file__, 1, "on /a\nb", None, sys.exc_info()
        )
    text = UtcFormatter(LOG_FORMAT).format(record)
    first, *rest = text.splitlines()
    assert first.endswith("on /a\\nb") and rest[0] == "Traceback (most recent call last):"


def test_an_audit_detail_stays_on_the_audit_line(panel, panel_lines):
    panel.audit.record("keepalive", "api", reason=f"line one\r\n{FORGED}", minutes=1)
    (line,) = panel_lines.getvalue().splitlines()
    assert line.endswith(f"event=keepalive actor=api minutes=1 reason=line one\\r\\n{FORGED}")


def test_the_dev_servers_request_lines_are_escaped_too():
    record = logging.LogRecord(
        "werkzeug", logging.INFO, __file__, 1, '127.0.0.1 - - "%s" 404 -', None, None
    )
    record.args = (f"GET /x?token=secret\n{FORGED} HTTP/1.1",)
    StripQueryString().filter(record)
    message = record.getMessage()
    assert "\n" not in message and "secret" not in message
