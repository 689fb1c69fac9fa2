"""Paging the audit log: each entry's id, the Link to the next page, the CLI's ids."""

from __future__ import annotations

import json
import re

from support.store import list_audit

LINK = re.compile(r'^<([^>]+)>; rel="next"$')


def fill(panel, n: int) -> None:
    for i in range(n):
        panel.audit.record("session_opened", "system", n=i)


def test_entries_carry_their_id_and_link_to_the_next_page_until_the_end(client, panel):
    fill(panel, 7)
    seen, url, pages = [], "/infra/vast/audit?limit=3", 0
    while url:
        response = client.get(url)
        assert response.status_code == 200
        page = response.json
        seen += [e["id"] for e in page]
        link = response.headers.get("Link")
        url = LINK.match(link).group(1) if link else None
        if url:
            assert url == f"/infra/vast/audit?before={page[-1]['id']}&limit=3"
        pages += 1
    assert pages == 3
    assert seen == [e.id for e in list_audit(panel.store.db, 100)]  # all 7, newest first, once each
    assert seen == sorted(seen, reverse=True) and len(seen) == 7


def test_no_link_when_the_page_holds_the_last_entries(client, panel):
    fill(panel, 3)
    response = client.get("/infra/vast/audit?limit=3")
    assert len(response.json) == 3 and "Link" not in response.headers
    before = response.json[1]["id"]
    older = client.get(f"/infra/vast/audit?before={before}")
    assert [e["id"] for e in older.json] == [response.json[2]["id"]]


def test_the_cli_prints_the_same_ids(app, panel):
    fill(panel, 4)
    runner = app.test_cli_runner()
    text = runner.invoke(args=["vast", "audit", "--limit", "2"]).stdout
    ids = [int(i) for i in re.findall(r"#(\d+)", text)]
    newest = [e.id for e in list_audit(panel.store.db, 2)]
    assert ids == newest
    assert f"Older entries: --before {newest[-1]}" in text
    data = json.loads(runner.invoke(args=["vast", "audit", "--json", "--limit", "2"]).stdout)
    assert [e["id"] for e in data] == newest
    older = runner.invoke(args=["vast", "audit", "--before", str(newest[-1])]).stdout
    assert [int(i) for i in re.findall(r"#(\d+)", older)] == [
        e.id for e in list_audit(panel.store.db, 10)
    ][2:]
