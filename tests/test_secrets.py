"""Neither key ever appears in a response, the audit log or a log line."""

import logging

import pytest
import requests

from conftest import CONTROL_KEY, VAST_KEY


def test_no_key_in_responses_audit_or_logs(client, vast, clock, caplog, panel):
    caplog.set_level(logging.DEBUG)
    bodies = []

    def call(method, path, **kwargs):
        response = getattr(client, method)(path, **kwargs)
        bodies.append(response.get_data(as_text=True))
        bodies.append(str(response.headers))
        return response

    vast.boot_after = 10
    call("get", "/infra/vast/status")
    call("post", "/infra/vast/power/on")
    call("post", "/infra/vast/activity")
    clock.advance(60)
    call("post", "/infra/vast/power/off")
    # vast.ai errors that echo the key back must not carry it further.
    vast.put_answer = (400, {"success": False, "error": "bad", "msg": f"key {VAST_KEY} invalid"})
    assert call("post", "/infra/vast/power/on").status_code == 502
    vast.put_answer = None
    vast.mock.replace("GET", vast.mock.registered()[0].url, body=requests.ConnectionError(VAST_KEY))
    clock.advance(10)
    assert call("get", "/infra/vast/status").status_code == 502
    call("get", "/infra/vast/costs")
    call("get", "/infra/vast/audit?limit=1000")
    call("get", "/infra/vast/status", headers={"X-API-Key": "wrong"})
    logging.getLogger("vastpanel").warning("echo %s and %s", VAST_KEY, CONTROL_KEY)

    audit_text = str([(e.event, e.meta) for e in panel.audit.entries(1000)])
    everything = "\n".join(bodies) + audit_text + caplog.text
    assert "power_on_failed" in audit_text  # the checks below look at real content
    assert "***" in audit_text
    for secret in (VAST_KEY, CONTROL_KEY):
        assert secret not in everything


@pytest.mark.parametrize("secret", [VAST_KEY, CONTROL_KEY])
def test_log_records_are_redacted(panel, caplog, secret):
    caplog.set_level(logging.INFO)
    logging.getLogger("anything.else").info("token=%s", secret)
    assert secret not in caplog.text
    assert "token=***" in caplog.text
