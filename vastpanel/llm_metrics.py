"""The LLM's own load, read from vLLM's Prometheus /metrics: fetch, parse and judge.

vLLM (both its older engine and the v1 engine) serves gauges of the requests running and
waiting, and counters of finished requests and of prompt and generation tokens. The LLM is
active when a gauge is above 0, or when a counter grew since the previous read (requests
finished in between, even if neither read saw one running). A counter that went down is a
restarted vLLM: its values become the new baseline, not activity. Values are summed over labels
(``model_name``, and ``engine`` on the v1 engine; ``finished_reason`` on request_success).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import requests
from prometheus_client.parser import text_string_to_metric_families

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
COUNTERS = (
    "vllm:request_success_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
)
MAX_BYTES = 4 * 1024 * 1024  # vLLM's text is ~100 KB; more is not a vLLM /metrics
TIMEOUT_S = (3.05, 5.0)  # connect, read
TOTAL_S = 10.0  # a slow trickle is cut here: the watchdog's look must stay short


class MetricsUnreadable(Exception):
    """The LLM's metrics could not be read; the message says why, for the page and the audit."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class VllmSample:
    """One read of vLLM's metrics, summed over labels."""

    running: float
    waiting: float
    counters: dict[str, float]


@dataclass(frozen=True)
class Verdict:
    """What one read says, compared with the previous one."""

    active: bool
    restarted: bool


def parse_vllm_metrics(text: str) -> VllmSample:
    """Sum vLLM's gauges and counters over their labels; raise MetricsUnreadable if absent."""
    sums: dict[str, float] = {}
    wanted = {RUNNING, WAITING, *COUNTERS}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in wanted:
                    sums[sample.name] = sums.get(sample.name, 0.0) + float(sample.value)
    except Exception as exc:  # the parser
        raise MetricsUnreadable(f"not Prometheus text ({type(exc).__name__})") from None
    missing = [name for name in (RUNNING, WAITING) if name not in sums]
    if missing:
        raise MetricsUnreadable(f"no {' or '.join(missing)} (not a vLLM server?)")
    counters = {name: sums[name] for name in COUNTERS if name in sums}
    return VllmSample(sums[RUNNING], sums[WAITING], counters)


def judge(previous: dict[str, float] | None, sample: VllmSample) -> Verdict:
    """Tell whether the LLM was active, and whether it restarted, since the previous counters."""
    busy = sample.running > 0 or sample.waiting > 0
    if not previous:
        return Verdict(active=busy, restarted=False)
    shared = [name for name in sample.counters if name in previous]
    restarted = any(sample.counters[name] < previous[name] for name in shared)
    grew = not restarted and any(sample.counters[name] > previous[name] for name in shared)
    return Verdict(active=busy or grew, restarted=restarted)


def fetch_metrics(http: requests.Session, url: str, token: str) -> str:
    """GET the metrics text (Bearer token when given); raise MetricsUnreadable with the reason."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    give_up = time.monotonic() + TOTAL_S
    try:
        with http.get(
            url, headers=headers, timeout=TIMEOUT_S, stream=True, allow_redirects=False
        ) as response:
            if response.status_code != 200:
                raise MetricsUnreadable(f"{url} answered HTTP {response.status_code}")
            body = bytearray()
            for chunk in response.iter_content(64 * 1024):
                body.extend(chunk)
                if len(body) > MAX_BYTES:
                    raise MetricsUnreadable(f"{url} answered over {MAX_BYTES // 2**20} MB")
                if time.monotonic() > give_up:
                    raise MetricsUnreadable(f"{url} took over {TOTAL_S:g} s to answer")
    except requests.Timeout:
        raise MetricsUnreadable(f"{url} timed out") from None
    except requests.RequestException as exc:
        raise MetricsUnreadable(f"{url} could not be reached ({type(exc).__name__})") from None
    return body.decode("utf-8", errors="replace")
