"""The cheap health notion the page uses to follow a start made without waiting."""

from __future__ import annotations

from conftest import HEALTH_URL
from vastpanel.domain.power import HEALTH_PROBE_EVERY_S


def health_gets(vast) -> int:
    return sum(1 for call in vast.mock.calls if call.request.url == HEALTH_URL)


def session_healthy(panel, report):
    """Ask the health of the session the report shows, as the page does."""
    return panel.power.session_healthy(report.state, report.session)


def test_not_running_is_none_and_probes_nothing(panel, vast):
    assert session_healthy(panel, panel.status.report()) is None
    assert health_gets(vast) == 0


def test_running_but_unhealthy_is_false_and_probes_at_most_every_few_seconds(panel, vast, clock):
    vast.set_running()
    vast.health_status = 502
    report = panel.status.report()
    assert session_healthy(panel, report) is False
    assert session_healthy(panel, report) is False
    assert health_gets(vast) == 1
    clock.advance(HEALTH_PROBE_EVERY_S)
    assert session_healthy(panel, panel.status.report()) is False
    assert health_gets(vast) == 2


def test_the_first_200_is_remembered_for_the_session_and_audited_once(panel, vast, clock):
    vast.set_running()
    report = panel.status.report()
    assert session_healthy(panel, report) is True
    clock.advance(60)
    assert session_healthy(panel, panel.status.report()) is True
    assert health_gets(vast) == 1
    healthy = [e for e in panel.audit.entries(50) if e.event == "instance_healthy"]
    assert len(healthy) == 1
    assert healthy[0].actor == "system"
    assert healthy[0].meta["endpoint"] == "http://203.0.113.7:41234"


def test_a_new_session_must_answer_again(panel, vast, clock):
    vast.set_running()
    assert session_healthy(panel, panel.status.report()) is True
    panel.power.power_off("admin")
    clock.advance(60)
    vast.set_running()
    vast.health_status = 503
    assert session_healthy(panel, panel.status.report()) is False


def test_a_power_on_that_waited_for_health_marks_the_session_healthy(panel, vast):
    vast.set_running()
    result = panel.power.power_on("api")
    assert result.healthy
    calls = health_gets(vast)
    assert session_healthy(panel, panel.status.report()) is True
    assert health_gets(vast) == calls  # no second probe of the health URL
    events = [e.event for e in panel.audit.entries(50)]
    assert "power_on_complete" in events and "instance_healthy" not in events
