"""A webhook's answer is never read whole (issue 23 §14): a webhook (or whoever answers at its
URL) that answers a notification with 64 MiB costs the panel no memory and no time, over real
HTTP on 127.0.0.1."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from conftest import base_config, config_from
from support.hostile_instance import HostileInstance
from vastpanel import create_app

FLOOD_BYTES = 64 * 1024 * 1024


@pytest.fixture
def webhook():
    server = HostileInstance("flood", flood_bytes=FLOOD_BYTES, limit_s=30)
    yield server
    server.stop()


def test_a_huge_webhook_answer_is_not_read(tmp_path, clock, webhook):
    url = f"http://127.0.0.1:{webhook.port}/hook"
    app = create_app(config_from(base_config(tmp_path, VAST_NOTIFY_URLS=url)), clock=clock)
    panel = app.extensions["vastpanel"]
    panel.audit.record("auto_shutdown_failed", "system", instance_id=1, error="test")
    began = time.monotonic()
    tracemalloc.start()
    try:
        sent = panel.notifier.deliver()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    took = time.monotonic() - began
    assert webhook.seen == ["POST /hook HTTP/1.1"]
    assert peak < 4 * 1024 * 1024, peak
    assert took < 5, took
    assert sent == 1  # a 200 is delivered, whatever follows it
    panel.store.close()
