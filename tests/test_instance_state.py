"""vast.ai's fields mapped to the panel's status word and endpoint."""

import pytest

from conftest import load_fixture
from vastpanel.vast.instance import (
    Reach,
    endpoint_base_url,
    read_instance_state,
)

PLAIN = Reach("http")


def running():
    return load_fixture("instance_running.json")["instances"]


@pytest.mark.parametrize(
    ("actual", "intended", "expected"),
    [
        ("running", "running", "running"),
        ("stopped", "running", "scheduling"),
        ("stopped", "stopped", "stopped"),
        (None, "running", "creating"),
        ("created", "running", "creating"),
        ("loading", "running", "loading"),
        ("exited", "running", "exited"),
        ("frozen", "frozen", "frozen"),
        ("rebooting", "running", "rebooting"),
        ("unknown", "running", "unknown"),
        ("offline", "running", "offline"),
        ("running", "stopped", "stopping"),
        ("restarting", "running", "restarting"),
        ("something_new", "running", "something_new"),
    ],
)
def test_status_mapping(actual, intended, expected):
    instance = dict(running(), actual_status=actual, intended_status=intended)
    state = read_instance_state(instance, 4242, 8001)
    assert state.status == expected
    if expected not in ("running",):
        assert state.message  # every status other than plain running explains itself
        assert state.endpoint_base_url is None


def test_unknown_id_is_not_found():
    state = read_instance_state(None, 4242, 8001)
    assert state.status == "not_found"
    assert state.instance_id == 4242


def test_running_endpoint_uses_stripped_ip_and_mapped_host_port():
    state = read_instance_state(running(), 4242, 8001)
    assert state.endpoint_base_url == "https://203.0.113.7:41234"  # TLS unless told otherwise
    assert state.gpu_name == "RTX 3090"
    assert state.dph_total == 0.45
    assert state.gpu_billed and not state.down


def test_endpoint_follows_the_configured_container_port():
    assert endpoint_base_url(running(), 8000) == "https://203.0.113.7:41233"
    assert endpoint_base_url(running(), 8000, PLAIN) == "http://203.0.113.7:41233"
    assert endpoint_base_url(running(), 9999) is None


@pytest.mark.parametrize(
    "ports",
    [None, {}, {"8001/tcp": []}, {"8001/tcp": [{"HostIp": "0.0.0.0"}]}, {"8001/tcp": "x"}],
)
def test_running_without_a_mapping_has_no_endpoint_and_says_why(ports):
    state = read_instance_state(dict(running(), ports=ports), 4242, 8001)
    assert state.status == "running"
    assert state.endpoint_base_url is None
    assert "8001/tcp" in state.message


def test_queued_start_message_says_the_gpu_is_taken():
    instance = dict(running(), actual_status="stopped", intended_status="running")
    state = read_instance_state(instance, 4242, 8001, start_queued=True)
    assert state.status == "scheduling"
    assert "queued" in state.message


def test_exited_message_carries_the_host_text():
    instance = dict(running(), actual_status="exited", status_msg="OOM killed")
    state = read_instance_state(instance, 4242, 8001)
    assert "OOM killed" in state.message
    assert not state.gpu_billed and state.down


def test_garbage_field_types_do_not_crash():
    instance = {"actual_status": 5, "intended_status": ["x"], "dph_total": "cheap", "id": "x"}
    state = read_instance_state(instance, 4242, 8001)
    assert state.dph_total is None
    assert state.instance_id == 4242


@pytest.mark.parametrize(
    "raw",
    [
        "127.0.0.1:18120/x?",
        "evil.example",
        "203.0.113.7/health#",
        "203.0.113.7 203.0.113.8",
        "user@203.0.113.7",
        "fe80::1%eth0",
        "",
        "  ",
        None,
        17,
    ],
)
def test_a_public_ipaddr_that_is_not_a_bare_address_leaves_the_endpoint_unknown(raw):
    state = read_instance_state(dict(running(), public_ipaddr=raw), 4242, 8001)
    assert state.status == "running"
    assert state.endpoint_base_url is None
    assert "endpoint is unknown" in state.message and "not a bare IP address" in state.message


@pytest.mark.parametrize(
    ("raw", "url"),
    [
        (" 203.0.113.7\n", "http://203.0.113.7:41234"),
        ("2001:db8::7", "http://[2001:db8::7]:41234"),
        ("\t2001:DB8:0:0::7 ", "http://[2001:db8::7]:41234"),
        ("::ffff:203.0.113.7", "http://[::ffff:cb00:7107]:41234"),
    ],
)
def test_bare_ipv4_and_ipv6_addresses_make_the_endpoint(raw, url):
    state = read_instance_state(dict(running(), public_ipaddr=raw), 4242, 8001, reach=PLAIN)
    assert state.endpoint_base_url == url


REFUSED = [
    "127.0.0.1",
    "127.8.9.10",
    "::1",
    "169.254.169.254",
    "10.0.0.5",
    "172.16.3.4",
    "192.168.1.20",
    "100.64.0.1",
    "0.0.0.0",
    "::",
    "224.0.0.251",
    "255.255.255.255",
    "fd00::1",
    "fe80::1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.5",
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
]


@pytest.mark.parametrize("raw", REFUSED)
def test_loopback_private_link_local_and_other_local_addresses_leave_the_endpoint_unknown(raw):
    state = read_instance_state(dict(running(), public_ipaddr=raw), 4242, 8001)
    assert state.status == "running"
    assert state.endpoint_base_url is None
    assert endpoint_base_url(dict(running(), public_ipaddr=raw), 8001, PLAIN) is None
    assert "endpoint is unknown" in state.message and "never connects to" in state.message
    assert repr(raw) in state.message


@pytest.mark.parametrize("raw", ["127.0.0.1\n", "::1", "::ffff:127.0.0.1", "127.0.0.2"])
def test_loopback_is_allowed_only_by_the_setting_for_tests(raw):
    instance = dict(running(), public_ipaddr=raw)
    loopback = Reach("http", allow_loopback=True)
    assert endpoint_base_url(instance, 8001) is None
    state = read_instance_state(instance, 4242, 8001)
    assert "VAST_ALLOW_LOOPBACK_INSTANCE_FOR_TESTS" in state.message
    assert endpoint_base_url(instance, 8001, loopback).startswith("http://")
    # The setting allows loopback only: the metadata service and private networks stay out.
    for other in ("169.254.169.254", "10.0.0.5", "fd00::1", "0.0.0.0"):
        assert endpoint_base_url(dict(running(), public_ipaddr=other), 8001, loopback) is None


@pytest.mark.parametrize("host_port", ["0", "65536", "٤١٢٣٤", "41234/x"])
def test_a_host_port_that_is_not_a_port_leaves_the_endpoint_unknown(host_port):
    instance = dict(running(), ports={"8001/tcp": [{"HostIp": "0.0.0.0", "HostPort": host_port}]})
    assert endpoint_base_url(instance, 8001) is None


@pytest.mark.parametrize(
    ("actual", "billed", "down", "starting"),
    [
        ("running", True, False, False),
        ("frozen", True, False, False),
        ("exited", False, True, False),
        ("unknown", False, True, False),
        ("offline", False, True, False),
        ("loading", False, False, True),
        ("rebooting", False, False, True),
        ("restarting", False, False, True),
        ("created", False, False, True),
    ],
)
def test_gpu_time_is_billed_only_while_running_or_frozen(actual, billed, down, starting):
    state = read_instance_state(dict(running(), actual_status=actual), 4242, 8001)
    assert (state.gpu_billed, state.down, state.starting) == (billed, down, starting)
