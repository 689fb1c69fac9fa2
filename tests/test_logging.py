"""Log lines: timestamp, level, event and actor; no secret; no query string."""

from __future__ import annotations

import io
import logging
import re

import pytest

from conftest import CONTROL_KEY, VAST_KEY
from vastpanel.logs import LOG_FORMAT, StripQueryString, UtcFormatter, configure_logging

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (INFO|WARNING|ERROR) \S+ .+$")


def werkzeug_record(request_line: str) -> logging.LogRecord:
    """A record shaped like the one werkzeug's dev server logs per request."""
    return logging.LogRecord(
        "werkzeug", logging.INFO, __file__, 1,
        '127.0.0.1 - - [01/May/2024 12:00:00] "%s" %s %s', (request_line, "200", "-"), None,
    )  # fmt: skip


def test_dev_server_request_lines_lose_their_query_string():
    record = werkzeug_record("GET /infra/vast/audit?limit=5&token=abc HTTP/1.1")
    assert StripQueryString().filter(record)
    assert record.getMessage().endswith('"GET /infra/vast/audit HTTP/1.1" 200 -')
    coloured = werkzeug_record("\x1b[1mPOST /x?a=b HTTP/1.1\x1b[0m")
    StripQueryString().filter(coloured)
    assert "?a=b" not in coloured.getMessage() and "POST /x HTTP/1.1" in coloured.getMessage()
    plain = werkzeug_record("GET /healthz HTTP/1.1")
    StripQueryString().filter(plain)
    assert plain.args == ("GET /healthz HTTP/1.1", "200", "-")


@pytest.fixture
def bare_logging(monkeypatch):
    """Logging as a fresh process has it: no handlers anywhere (pytest's own put aside).

    Call it first in the test: pytest adds its root handlers after the fixtures are set up.
    """
    panel_log = logging.getLogger("vastpanel")
    werkzeug_log = logging.getLogger("werkzeug")
    monkeypatch.setattr(panel_log, "handlers", [])
    monkeypatch.setattr(panel_log, "propagate", True)
    monkeypatch.setattr(werkzeug_log, "filters", [])
    level = panel_log.level
    panel_log.setLevel(logging.NOTSET)

    def bare() -> logging.Logger:
        monkeypatch.setattr(logging.getLogger(), "handlers", [])
        return panel_log

    yield bare
    panel_log.setLevel(level)


def test_configure_logging_writes_action_lines_to_the_stream(bare_logging):
    panel_log = bare_logging()
    stream = io.StringIO()
    configure_logging(stream)
    configure_logging(stream)  # a second app in the same process adds nothing
    panel_log.info("event=%s actor=%s instance_id=%s", "power_on_requested", "api", 4242)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert LINE.match(lines[0])
    assert lines[0].endswith("INFO vastpanel event=power_on_requested actor=api instance_id=4242")
    assert len(logging.getLogger("werkzeug").filters) == 1


def test_configure_logging_leaves_configured_logging_alone(bare_logging):
    panel_log = bare_logging()
    root_handler = logging.StreamHandler(io.StringIO())
    logging.getLogger().handlers.append(root_handler)
    configure_logging(io.StringIO())
    assert panel_log.handlers == [] and panel_log.propagate
    assert panel_log.getEffectiveLevel() == logging.INFO


def test_a_power_cycle_logs_one_line_per_action_and_no_secret(client, vast, clock, caplog):
    caplog.set_level(logging.INFO, logger="vastpanel")
    vast.set_running()
    assert client.post("/infra/vast/power/on", json={}).status_code == 200
    assert client.get("/infra/vast/audit?limit=5").status_code == 200
    clock.advance(600)
    assert client.post("/infra/vast/activity", json={"prompt": "body text"}).status_code == 200
    vast.put_answer = (400, {"success": False, "error": "bad", "msg": f"key {VAST_KEY} refused"})
    assert client.post("/infra/vast/power/off").status_code == 502
    vast.put_answer = None
    assert client.post("/infra/vast/power/off").status_code == 200
    formatter = UtcFormatter(LOG_FORMAT)
    lines = [formatter.format(r) for r in caplog.records if r.name == "vastpanel"]
    text = "\n".join(lines)
    assert all(LINE.match(line) for line in lines), text
    events = [re.search(r"event=(\S+) actor=(\S+)", line).groups() for line in lines]
    assert events == [
        ("power_on_requested", "api"),
        ("session_opened", "system"),
        ("power_on_complete", "api"),
        ("power_off_requested", "api"),
        ("power_off_failed", "api"),
        ("power_off_requested", "api"),
        ("power_off_complete", "api"),
    ]
    assert "key *** refused" in text
    for leak in (VAST_KEY, CONTROL_KEY, "limit=5", "body text"):
        assert leak not in text
