"""The vast.ai client against each answer shape and fault in shared/vast-api.md."""

import json

import pytest
import requests
import responses

from conftest import INSTANCE_ID, INSTANCE_URL, VAST_KEY, VAST_URL, load_fixture
from support.clock import FakeClock
from vastpanel.errors import VastErrorKind
from vastpanel.vast.client import VastClient, VastError


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def client(clock):
    return VastClient(VAST_URL, VAST_KEY, sleep=clock.sleep)


@pytest.fixture
def mock():
    with responses.RequestsMock() as mock:
        yield mock


def test_show_instance_sends_bearer_header_and_owner_me(client, mock):
    mock.get(INSTANCE_URL, json=load_fixture("instance_running.json"))
    instance = client.fetch_instance(INSTANCE_ID)
    assert instance["actual_status"] == "running"
    sent = mock.calls[0].request
    assert sent.headers["Authorization"] == f"Bearer {VAST_KEY}"
    assert sent.url == INSTANCE_URL + "?owner=me"
    assert VAST_KEY not in sent.url


def test_unknown_instance_is_none(client, mock):
    mock.get(INSTANCE_URL, json={"instances": None})
    assert client.fetch_instance(INSTANCE_ID) is None


@pytest.mark.parametrize("body", [{}, {"instances": "x"}, [1, 2]])
def test_unexpected_shapes_are_bad_answers(client, mock, body):
    mock.get(INSTANCE_URL, json=body)
    with pytest.raises(VastError) as caught:
        client.fetch_instance(INSTANCE_ID)
    assert caught.value.kind is VastErrorKind.BAD_ANSWER


def test_start_and_stop_send_the_state(client, mock):
    mock.put(INSTANCE_URL, json={"success": True})
    mock.put(INSTANCE_URL, json={"success": True})
    assert client.start_instance(INSTANCE_ID).queued is False
    client.stop_instance(INSTANCE_ID)
    assert [json.loads(c.request.body) for c in mock.calls] == [
        {"state": "running"},
        {"state": "stopped"},
    ]


def test_resources_unavailable_is_a_queued_start_not_an_error(client, mock):
    mock.put(INSTANCE_URL, json=load_fixture("start_resources_unavailable.json"))
    result = client.start_instance(INSTANCE_ID)
    assert result.queued
    assert "queued" in result.message


def test_a_200_with_success_false_is_a_refusal(client, mock):
    mock.put(INSTANCE_URL, json={"success": False, "error": "weird", "msg": "no"})
    with pytest.raises(VastError, match="refused.*weird"):
        client.start_instance(INSTANCE_ID)


def test_missing_billing(client, mock):
    mock.put(INSTANCE_URL, status=400, json=load_fixture("missing_billing.json"))
    with pytest.raises(VastError, match="missing_billing") as caught:
        client.start_instance(INSTANCE_ID)
    assert caught.value.kind == "refused"


def test_no_such_instance_on_put(client, mock):
    mock.put(INSTANCE_URL, status=404, json=load_fixture("no_such_instance.json"))
    with pytest.raises(VastError) as caught:
        client.stop_instance(INSTANCE_ID)
    assert caught.value.kind == "not_found"


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (401, load_fixture("auth_error.json")),
        (403, {"success": False, "error": "forbidden"}),
        (404, load_fixture("auth_error.json")),
        (200, load_fixture("auth_error.json")),
    ],
)
def test_rejected_key(client, mock, status, body):
    mock.get(INSTANCE_URL, status=status, json=body)
    with pytest.raises(VastError, match="rejected VAST_API_KEY") as caught:
        client.fetch_instance(INSTANCE_ID)
    assert caught.value.kind == "auth"
    assert VAST_KEY not in str(caught.value)
    assert len(mock.calls) == 1  # an auth failure is not retried


def test_non_json_body_is_a_bad_answer(client, mock):
    mock.get(INSTANCE_URL, status=200, body=load_fixture("proxy_502.html"))
    with pytest.raises(VastError, match="not a JSON object") as caught:
        client.fetch_instance(INSTANCE_ID)
    assert caught.value.kind is VastErrorKind.BAD_ANSWER


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ("<html>502</html>", VastErrorKind.BAD_ANSWER),
        (requests.ConnectionError("refused"), VastErrorKind.UNREACHABLE),
    ],
)
def test_both_ways_of_failing_count_as_upstream_in_the_metric(clock, mock, body, kind):
    """The error keeps its kind; vastpanel_vast_calls_total's documented label stays 'upstream'."""
    seen = []
    client = VastClient(
        VAST_URL, VAST_KEY, sleep=clock.sleep, observe=lambda *call: seen.append(call)
    )
    mock.get(INSTANCE_URL, body=body)
    with pytest.raises(VastError) as caught:
        client.fetch_instance(INSTANCE_ID)
    assert caught.value.kind is kind
    assert seen == [("GET", "upstream")]


@pytest.mark.parametrize("status", [502, 503, 504])
def test_retryable_statuses_are_retried_then_succeed(client, mock, clock, status):
    mock.get(INSTANCE_URL, status=status, body="busy")
    mock.get(INSTANCE_URL, json=load_fixture("instance_running.json"))
    assert client.fetch_instance(INSTANCE_ID)["id"] == INSTANCE_ID
    assert len(mock.calls) == 2
    assert clock.slept == [0.15]


def test_three_attempts_in_all_with_backoff(client, mock, clock):
    mock.get(INSTANCE_URL, status=502, body=load_fixture("proxy_502.html"))
    with pytest.raises(VastError, match="failing \\(502\\)"):
        client.fetch_instance(INSTANCE_ID)
    assert len(mock.calls) == 3
    assert clock.slept == pytest.approx([0.15, 0.225])


def test_numeric_retry_after_is_honoured(client, mock, clock):
    mock.get(
        INSTANCE_URL,
        status=429,
        headers={"Retry-After": "2"},
        json={"detail": "API requests too frequent endpoint threshold=2.0"},
    )
    mock.get(INSTANCE_URL, json=load_fixture("instance_running.json"))
    client.fetch_instance(INSTANCE_ID)
    assert clock.slept == [2.0]


def test_retry_after_beyond_the_cap_gives_up_at_once(client, mock, clock):
    mock.get(INSTANCE_URL, status=429, headers={"Retry-After": "120"}, body="slow down")
    with pytest.raises(VastError, match="retry after 120 s") as caught:
        client.fetch_instance(INSTANCE_ID)
    assert caught.value.kind == "rate_limited"
    assert len(mock.calls) == 1
    assert clock.slept == []


def test_429_without_retry_after_waits_the_get_interval_each_time_then_fails(client, mock, clock):
    mock.get(INSTANCE_URL, status=429, body="API requests too frequent")
    with pytest.raises(VastError, match="rate limiting") as caught:
        client.fetch_instance(INSTANCE_ID)
    assert caught.value.kind == "rate_limited"
    assert len(mock.calls) == 3
    assert clock.slept == [2.0, 2.0]  # vast.ai's GET interval: a quicker retry cannot succeed


@pytest.mark.parametrize(
    ("body", "content_type", "waited"),
    [
        ("API requests too frequent: endpoint threshold=2.0", "text/plain", 2.0),
        ("API requests too frequent: endpoint threshold=3.5", "text/plain", 3.5),
        ('{"detail": "API requests too frequent endpoint threshold=1.5"}', "application/json", 1.5),
        ('{"success": false, "error": "rate_limited", "msg": "slow"}', "application/json", 2.0),
        ("", "text/plain", 2.0),
    ],
)
def test_a_get_429_waits_the_interval_its_body_names_else_two_seconds(
    client, mock, clock, body, content_type, waited
):
    mock.get(INSTANCE_URL, status=429, body=body, content_type=content_type)
    mock.get(INSTANCE_URL, json=load_fixture("instance_running.json"))
    assert client.fetch_instance(INSTANCE_ID)["id"] == INSTANCE_ID
    assert clock.slept == [waited]


def test_a_put_429_without_threshold_waits_one_second(client, mock, clock):
    mock.put(INSTANCE_URL, status=429, body="API requests too frequent")
    mock.put(INSTANCE_URL, json={"success": True})
    client.stop_instance(INSTANCE_ID)
    assert clock.slept == [1.0]
    assert len(mock.calls) == 2


def test_a_threshold_beyond_the_cap_gives_up_at_once(client, mock, clock):
    mock.get(INSTANCE_URL, status=429, body="API requests too frequent: endpoint threshold=60.0")
    with pytest.raises(VastError, match="retry after 60 s"):
        client.fetch_instance(INSTANCE_ID)
    assert clock.slept == [] and len(mock.calls) == 1


def test_a_gone_instance_404_not_found_reads_as_unknown_id(client, mock):
    gone = {"success": False, "error": "not_found", "msg": "Instance not found"}
    mock.get(INSTANCE_URL, status=404, json=gone)
    assert client.fetch_instance(INSTANCE_ID) is None
    mock.put(INSTANCE_URL, status=404, json=gone)
    with pytest.raises(VastError, match="does not know this instance") as caught:
        client.stop_instance(INSTANCE_ID)
    assert caught.value.kind == "not_found"


def test_connection_errors_are_retried_and_reported_without_the_key(client, mock):
    mock.get(INSTANCE_URL, body=requests.ConnectionError(f"refused {VAST_KEY}"))
    with pytest.raises(VastError, match="unreachable") as caught:
        client.fetch_instance(INSTANCE_ID)
    assert caught.value.kind is VastErrorKind.UNREACHABLE
    assert len(mock.calls) == 3
    assert VAST_KEY not in caught.value.message


def test_timeouts_are_retried_and_reported(client, mock):
    mock.get(INSTANCE_URL, body=requests.ReadTimeout("slow"))
    mock.get(INSTANCE_URL, body=requests.ConnectTimeout("slow"))
    mock.get(INSTANCE_URL, body=requests.ReadTimeout("slow"))
    with pytest.raises(VastError, match="did not answer in time"):
        client.fetch_instance(INSTANCE_ID)


def test_every_call_has_a_timeout(client, mock):
    seen = []
    mock.add_callback(
        responses.GET,
        INSTANCE_URL,
        callback=lambda request: (
            seen.append(request.req_kwargs["timeout"]) or (200, {}, '{"instances": null}')
        ),
    )
    client.fetch_instance(INSTANCE_ID)
    assert seen and seen[0] is not None
