"""The LLM's own load, read from vLLM's Prometheus /metrics: fetch, parse, judge and keep.

vLLM (both its older engine and the v1 engine) serves gauges of the requests running and
waiting, and counters of finished requests and of prompt and generation tokens. The LLM is
active when a gauge is above 0, or when a counter grew since the previous read (requests
finished in between, even if neither read saw one running). A counter that went down is a
restarted vLLM: its values become the new baseline, not activity. Values are summed over labels
(``model_name``, and ``engine`` on the v1 engine; ``finished_reason`` on request_success).

A stall is not work. vLLM leaves both gauges above 0 when every request in flight is aborted
(a client closes a stream) until its engine runs another step (vllm-project/vllm#22545, #29928).
So gauges above 0 while none of the counters moves for VAST_LLM_STALL_MINUTES count as stuck:
the LLM is idle from the last time a counter moved. A generation moves
generation_tokens_total at every read, so it never stalls. This is the rule of the instance's
agent (deploy/instance/vastpanel_agent.py, observe_llm), so the two agree on when the GPU idles.

A read happens at most every VAST_METRICS_EVERY_S, one read shared by every greenlet and
process (the reading lives in SQLite), and never while the instance is not running.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from ..clock import Clock, iso_utc
from ..config import Config
from ..instance_http import InstanceHttp, InstanceUnreadable, Limits
from ..storage import llm_readings, sessions, values
from ..storage.database import Store
from ..storage.llm_readings import LlmReading
from ..storage.sessions import Session
from ..vast.instance import InstanceState
from .audit import Audit, redact_value
from .instance import InstanceReader
from .lease_holder import LeaseHolder
from .power import HEALTHY_SESSION_KEY

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
COUNTERS = (
    "vllm:request_success_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
)
# vLLM's text is ~100 KB; more is not a vLLM /metrics. A read is cut after TOTAL_S: the look
# that is about to stop an idle instance reads them (twice at most) before the stop.
MAX_BYTES = 4 * 1024 * 1024
TOTAL_S = 3.0
METRICS_LIMITS = Limits(total_s=TOTAL_S, max_bytes=MAX_BYTES, connect_s=2.0)
METRICS_LEASE = "llm_metrics_read"
# Which availability of the LLM's metrics was last audited, and for which session.
UNAVAILABLE_AUDITED_KEY = "llm_metrics_unavailable_session"
AVAILABLE_AUDIT_DUE_KEY = "llm_metrics_back_due"
# vLLM started with --disable-log-stats serves /metrics without a single vllm: metric: its load
# cannot be known, which is not the same as idle.
NO_VLLM_METRICS = "the LLM serves no vllm: metrics at all (vLLM started with --disable-log-stats?)"


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

    active: bool  # a gauge above 0, or a counter grew
    restarted: bool
    moved: bool = False  # a counter grew (work was done since the previous read)


@dataclass(frozen=True)
class Progress:
    """What the stall rule makes of one read."""

    active_at: float | None  # the last moment the LLM was at work
    progress_at: float  # the last time a counter moved (or the session's first read)
    stalled_since: float | None  # since when its busy gauges count as stuck, or None


def parse_vllm_metrics(text: str) -> VllmSample:
    """Sum vLLM's gauges and counters over their labels; raise MetricsUnreadable if absent."""
    sums: dict[str, float] = {}
    wanted = {RUNNING, WAITING, *COUNTERS}
    any_vllm = False
    try:
        for family in text_string_to_metric_families(text):
            any_vllm = any_vllm or family.name.startswith("vllm:")
            for sample in family.samples:
                if sample.name in wanted:
                    sums[sample.name] = sums.get(sample.name, 0.0) + float(sample.value)
    except Exception as exc:  # the parser
        raise MetricsUnreadable(f"not Prometheus text ({type(exc).__name__})") from None
    if not any_vllm:
        raise MetricsUnreadable(NO_VLLM_METRICS)
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
    return Verdict(active=busy or grew, restarted=restarted, moved=grew)


def follow_progress(
    previous: LlmReading | None, sample: VllmSample, verdict: Verdict, now: float, stall_s: float
) -> Progress:
    """Apply the stall rule to one read: busy gauges with no counter moving for stall_s are stuck.

    As the agent does: a counter that moved (or a restart, or the first read) is progress; busy
    gauges are believed until stall_s has passed without progress; from then on they are no
    work, and the LLM is idle from the last progress. stall_s 0 always believes the gauges.
    """
    busy = sample.running > 0 or sample.waiting > 0
    last_progress = previous.progress_at if previous is not None else None
    last_active = previous.active_at if previous is not None else None
    progress_at = (
        now if verdict.moved or verdict.restarted or last_progress is None else last_progress
    )
    stalled = busy and 0 < stall_s <= now - progress_at
    if verdict.moved or (busy and not stalled):
        active_at = now
    elif stalled:  # what the gauges showed since the last progress was no work
        active_at = min(t for t in (last_active, progress_at) if t is not None)
    else:
        active_at = last_active
    stalled_since = None
    if stalled:
        already = previous.stalled_since if previous is not None else None
        stalled_since = already if already is not None else now
    return Progress(active_at, progress_at, stalled_since)


def fetch_metrics(http: InstanceHttp, url: str, token: str) -> str:
    """GET the metrics text (Bearer token when given); raise MetricsUnreadable with the reason."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        answer = http.request("GET", url, METRICS_LIMITS, headers=headers)
    except InstanceUnreadable as exc:
        raise MetricsUnreadable(f"{url}: {exc.reason}") from None
    if answer.status != 200:
        raise MetricsUnreadable(f"{url} answered HTTP {answer.status}")
    return answer.body.decode("utf-8", errors="replace")


class LlmLoad:
    """The LLM's load as its own metrics tell it, read once for everyone."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        config: Config,
        instance_http: InstanceHttp,
        audit: Audit,
        instance: InstanceReader,
        leases: LeaseHolder,
    ):
        self.store = store
        self.clock = clock
        self.config = config
        self.instance_http = instance_http
        self.audit = audit
        self.instance = instance
        self.leases = leases
        self._lock = threading.Lock()

    def stored(self, session: Session | None) -> LlmReading | None:
        """Return the stored reading of this session, reading nothing (None when off)."""
        if not self.config.llm_source:
            return None
        reading = llm_readings.read_llm_reading(self.store.db)
        if reading is not None and (session is None or reading.session_id != session.id):
            return None
        return reading

    def reading(
        self, state: InstanceState, *, fresh: bool = False, since: float | None = None
    ) -> LlmReading | None:
        """Return the LLM's reading for this session, read at most every VAST_METRICS_EVERY_S.

        fresh: read now, unless a reading made at or after since is stored (the same look's).
        None when the llm source is off or the instance is not running (never read then).
        Never raises for the metrics themselves: a failed read is a reading with its reason.
        """
        if not self.config.llm_source or state.status != "running":
            return None
        session = sessions.current_session(self.store.db)
        session_id = session.id if session is not None else None
        asked = self.clock.now()

        def reuse() -> LlmReading | None:
            stored = llm_readings.read_llm_reading(self.store.db)
            if stored is None or stored.session_id != session_id:
                return None
            if stored.read_at > asked:
                return stored  # read by another greenlet or process while this one waited
            if since is not None and stored.read_at >= since:
                return stored
            recent = 0 <= asked - stored.read_at < self.config.llm_metrics_every_s
            return stored if recent and not fresh else None

        return self.leases.read_once(
            self._lock, METRICS_LEASE, reuse, lambda: self._read_now(state, session)
        )

    def _read_now(self, state: InstanceState, session: Session | None) -> LlmReading:
        """Read the metrics, judge them against the stored baseline, store and audit."""
        db = self.store.db
        session_id = session.id if session is not None else None
        previous = llm_readings.read_llm_reading(db)
        if previous is not None and previous.session_id != session_id:
            previous = None  # another session's counters: a new boot, not a baseline
        port, path = self.config.llm_metrics_port, self.config.llm_metrics_path
        base = self.instance.endpoint(state, port)
        try:
            if base is None:
                raise MetricsUnreadable(f"container port {port} is not mapped on the instance")
            sample = parse_vllm_metrics(
                fetch_metrics(self.instance_http, base + path, self.config.llm_metrics_token)
            )
        except MetricsUnreadable as exc:
            reason = redact_value(exc.reason)
            reading = LlmReading(
                read_at=self.clock.now(),
                session_id=session_id,
                error=reason,
                running=None,
                waiting=None,
                counters=previous.counters if previous else {},  # kept as the baseline
                active_at=previous.active_at if previous else None,
                progress_at=previous.progress_at if previous else None,
                stalled_since=previous.stalled_since if previous else None,
            )
            llm_readings.save_llm_reading(db, reading)
            self._audit_unavailable(state, session, reason)
            return reading
        now = self.clock.now()
        verdict = judge(previous.counters if previous else None, sample)
        progress = follow_progress(
            previous, sample, verdict, now, self.config.llm_stall_minutes * 60
        )
        reading = LlmReading(
            read_at=now,
            session_id=session_id,
            error=None,
            running=sample.running,
            waiting=sample.waiting,
            counters=sample.counters,
            active_at=progress.active_at,
            progress_at=progress.progress_at,
            stalled_since=progress.stalled_since,
        )
        llm_readings.save_llm_reading(db, reading)
        self._audit_stall(state, previous, reading, verdict)
        if values.get_value(db, AVAILABLE_AUDIT_DUE_KEY) is not None:
            values.set_value(db, AVAILABLE_AUDIT_DUE_KEY, None)
            self.audit.record("llm_metrics_available", "system", instance_id=state.instance_id)
        return reading

    def _audit_stall(
        self,
        state: InstanceState,
        previous: LlmReading | None,
        reading: LlmReading,
        verdict: Verdict,
    ) -> None:
        """Audit a stall once when it is declared, and once when it clears."""
        was_stalled = previous is not None and previous.stalled
        if reading.stalled and not was_stalled:
            self.audit.record(
                "llm_stalled",
                "system",
                instance_id=state.instance_id,
                running=reading.running,
                waiting=reading.waiting,
                no_progress_minutes=(reading.read_at - reading.progress_at) / 60,
                last_progress_at=iso_utc(reading.progress_at),
                stall_minutes=self.config.llm_stall_minutes,
            )
        elif was_stalled and not reading.stalled:
            moved = verdict.moved or verdict.restarted
            self.audit.record(
                "llm_stall_cleared",
                "system",
                instance_id=state.instance_id,
                reason="a counter moved" if moved else "the gauges fell to 0",
                stalled_minutes=(reading.read_at - previous.stalled_since) / 60,
            )

    def _audit_unavailable(
        self, state: InstanceState, session: Session | None, reason: str
    ) -> None:
        """Audit the metrics as unavailable once per session, once the LLM should be up.

        While the model is still loading its metrics cannot answer either; that is not worth
        an entry until the session's health URL has answered or VAST_WAIT_TIMEOUT_S has passed.
        """
        db = self.store.db
        if session is None or values.get_value(db, UNAVAILABLE_AUDITED_KEY) == session.id:
            return
        should_be_up = values.get_value(db, HEALTHY_SESSION_KEY) == session.id or (
            session.seconds(self.clock.now()) >= self.config.wait_timeout_s
        )
        if not should_be_up:
            return
        values.set_value(db, UNAVAILABLE_AUDITED_KEY, session.id)
        values.set_value(db, AVAILABLE_AUDIT_DUE_KEY, session.id)
        self.audit.record(
            "llm_metrics_unavailable",
            "system",
            instance_id=state.instance_id,
            reason=reason,
            fallback="gateway posts" if self.config.gateway_source else "session start only",
        )
