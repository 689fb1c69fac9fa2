"""Notifications end to end: gunicorn and the simulator over loopback, a webhook receiver run by
the test on 127.0.0.1. The warning then the auto-stop arrive in order, once each; with the
receiver down for a minute they arrive once it is back; kill -9 of the panel with them queued
loses none and doubles none."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import CONTROL_KEY, INSTANCE_ID, VAST_KEY
from support import store, wait_for
from support.liveserver import PanelProcess, free_port, running_simulator, simulator_env
from vastpanel.simulator import Simulator

pytestmark = pytest.mark.e2e

DOWN_S = 60.0
IDLE_STOP = ["session_opened", "idle_warning", "auto_shutdown_complete"]


class Receiver:
    """A webhook on 127.0.0.1 that records what it got; start() and stop() on a fixed port."""

    def __init__(self, port: int):
        self.port = port
        self.url = f"http://127.0.0.1:{port}/hook/secret-path-token"
        self.got: list[dict] = []
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        got = self.got

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                got.append({**body, "_at": time.time(), "_key": self.headers["Idempotency-Key"]})
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def events(self) -> list[str]:
        return [b["event"] for b in self.got]


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with running_simulator(VAST_KEY, INSTANCE_ID) as simulator:
        yield simulator


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver(free_port())
    yield hook
    hook.stop()


def panel_env(sim, tmp_path, hook: Receiver) -> dict[str, str]:
    """Idle 15 s with a warning 6 s before; the receiver as a json webhook."""
    return simulator_env(
        sim,
        tmp_path / "panel.db",
        CONTROL_KEY,
        VAST_AUTO_SHUTDOWN_MINUTES="0.25",
        VAST_WARN_MINUTES="0.1",
        VAST_WATCHDOG_INTERVAL_S="2",
        VAST_STATUS_TTL_S="1",
        VAST_NOTIFY_URLS=f"json+{hook.url}",
        VAST_NOTIFY_RETRY_S="1",
    )


def outbox_states(tmp_path) -> list[tuple[str, str, int]]:
    db = store.open_db(str(tmp_path / "panel.db"))
    try:
        return [(r.entry.event, r.state, r.attempts) for r in reversed(store.list_outbox(db, 50))]
    finally:
        db.close()


def test_warning_then_auto_stop_arrive_in_order_once_each(sim, tmp_path, receiver):
    receiver.start()
    server = PanelProcess(panel_env(sim, tmp_path, receiver), log_path=tmp_path / "server.log")
    try:
        assert wait_for(lambda: "auto_shutdown_complete" in receiver.events, 60), server.log()
        time.sleep(5)  # a few more delivery runs: nothing more may come
        assert receiver.events == IDLE_STOP
        warning, stopped = receiver.got[1], receiver.got[2]
        assert stopped["_at"] - warning["_at"] > 3  # the warning came before, not with, the stop
        assert warning["meta"]["stop_in_minutes"] <= 0.1
        assert stopped["meta"]["session_cost_usd"] > 0 and "stopped" in stopped["message"]
        assert [b["instance_id"] for b in receiver.got] == [INSTANCE_ID] * 3
        assert {s for _, s, _ in outbox_states(tmp_path)} == {"sent"}
        assert "secret-path-token" not in server.log()
    finally:
        server.stop()


@pytest.mark.long
def test_receiver_down_a_minute_and_kill_9_lose_nothing_and_double_nothing(sim, tmp_path, receiver):
    down_since = time.monotonic()
    env = panel_env(sim, tmp_path, receiver)
    server = PanelProcess(env, log_path=tmp_path / "server.log")
    try:

        def queued_and_tried():
            rows = outbox_states(tmp_path)
            return [e for e, _, _ in rows] == IDLE_STOP and rows[0][2] >= 1 and rows

        rows = wait_for(queued_and_tried, 60)
        assert rows, outbox_states(tmp_path)
        assert {s for _, s, _ in rows} <= {"pending", "sending"}
        server.kill()  # kill -9 with all three queued, none delivered
    finally:
        server.stop()
    server = PanelProcess(env, log_path=tmp_path / "server2.log")
    try:
        time.sleep(max(0.0, DOWN_S - (time.monotonic() - down_since)))
        assert receiver.got == []
        receiver.start()
        back = time.monotonic()
        assert wait_for(lambda: len(receiver.got) >= 3, 90), outbox_states(tmp_path)
        print(f"delivered {time.monotonic() - back:.1f} s after the receiver came back")
        # The receiver's 200 is in; the panel marks each row sent just after (a kill between
        # the two would send that one again, with the same key: at least once, by design).
        confirmed = wait_for(lambda: {s for _, s, _ in outbox_states(tmp_path)} == {"sent"}, 10)
        assert confirmed, outbox_states(tmp_path)
        server.kill()  # and again, after the sends were confirmed
    finally:
        server.stop()
    server = PanelProcess(env, log_path=tmp_path / "server3.log")
    try:
        time.sleep(6)  # three delivery runs of the restarted panel
        assert receiver.events == IDLE_STOP
        assert len({b["_key"] for b in receiver.got}) == 3
        rows = outbox_states(tmp_path)
        assert {s for _, s, _ in rows} == {"sent"}, rows
    finally:
        server.stop()
