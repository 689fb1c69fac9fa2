"""Audit at scale: the audit API and the page's audit partial over 1,000,000 audit rows.

The rows go straight into the SQLite file (migrated first, then one executemany) before the
production server starts. One client then asks each URL --requests times in a row:
GET /infra/vast/audit?limit=50, the same 50 entries from the middle of the log (?before=),
and the signed-in page's partial /partials/audit (20 entries), newest and from the middle.
Target: p50 and p95 under 20 ms for each.

    python3 bench/audit_scale.py [--rows 1000000] [--requests 200]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _support import api_headers, percentile, stack

from support import store
from support.liveserver import signed_in_session

TARGET_MS = 20.0
EVENTS = [
    ("power_on_requested", "api", {"instance_id": 4242, "wait_for_health": True}),
    ("power_on_complete", "api", {"instance_id": 4242, "endpoint": "http://203.0.113.7:41234"}),
    ("session_opened", "system", {"instance_id": 4242, "dph_total": 0.35}),
    ("power_off_requested", "admin", {"instance_id": 4242}),
    ("power_off_complete", "admin", {"session_minutes": 42.5, "session_cost_usd": 0.248}),
    ("auto_shutdown", "system", {"instance_id": 4242, "inactive_minutes": 30.2}),
]


def fill(db_path: Path, rows: int) -> None:
    """Create the schema and insert `rows` audit entries, one per minute up to now."""
    db = store.open_db(str(db_path))
    store.migrate(db)
    start = time.time() - rows * 60
    entries = (
        (start + i * 60, EVENTS[i % len(EVENTS)][0], EVENTS[i % len(EVENTS)][1], meta)
        for i, meta in enumerate(
            json.dumps(EVENTS[i % len(EVENTS)][2], sort_keys=True) for i in range(rows)
        )
    )
    began = time.monotonic()
    with db.conn:
        db.conn.executemany(
            "INSERT INTO audit (ts, event, actor, meta) VALUES (?, ?, ?, ?)", entries
        )
    took = time.monotonic() - began
    size = db_path.stat().st_size + Path(f"{db_path}-wal").stat().st_size
    print(f"inserted {rows} audit rows in {took:.1f} s; database {size / 2**20:.0f} MiB")
    db.close()


def timed(get, url: str, count: int, check) -> list[float]:
    """GET url count times in a row; return the latencies in ms (each answer checked)."""
    get(url)  # the first request warms the page cache, templates and connection
    latencies = []
    for _ in range(count):
        began = time.perf_counter()
        response = get(url)
        latencies.append((time.perf_counter() - began) * 1000)
        check(response)
    return latencies


def main(argv: list[str] | None = None) -> int:
    """Fill the database, start the server and print p50/p95 of each URL."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args(argv)
    with stack(before_start=lambda path: fill(path, args.rows)) as (_sim, server, _):
        api = server.url + "/infra/vast/audit"
        page = signed_in_session(server.url, server.control_key)
        headers = api_headers()
        middle = args.rows // 2

        def api_get(url):
            return page.get(url, headers=headers, timeout=10)

        def api_check(expected):
            def check(response):
                body = response.json()
                assert response.status_code == 200 and len(body) == expected, response.text

            return check

        def partial_check(response):
            assert response.status_code == 200, response.status_code
            assert response.text.count("data-audit-id=") == 20, "not 20 entries"
            assert "Older entries" in response.text

        cases = [
            ("GET /infra/vast/audit?limit=50", api_get, f"{api}?limit=50", api_check(50)),
            (
                f"GET /infra/vast/audit?limit=50&before={middle}",
                api_get,
                f"{api}?limit=50&before={middle}",
                api_check(50),
            ),
            ("GET /partials/audit", page.get, server.url + "/partials/audit", partial_check),
            (
                f"GET /partials/audit?before={middle}",
                page.get,
                f"{server.url}/partials/audit?before={middle}",
                partial_check,
            ),
        ]
        worst = 0.0
        for name, get, url, check in cases:
            latencies = timed(get, url, args.requests, check)
            p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
            worst = max(worst, p95)
            print(
                f"{name:45} {args.requests} requests: p50 {p50:.2f} ms, p95 {p95:.2f} ms, "
                f"max {max(latencies):.2f} ms"
            )
    print(f"worst p95 / {TARGET_MS:g} ms target: {worst / TARGET_MS:.3f}")
    return 0 if worst < TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
