"""vLLM-shaped Prometheus metrics for a simulated LLM stack, moved by the requests it serves.

Built with prometheus_client, as vLLM itself is, so /metrics is real exposition text: HELP and
TYPE lines, ``_total`` and ``_created`` samples, histograms. Names and labels follow vLLM's v1
engine: gauges ``vllm:num_requests_running``/``vllm:num_requests_waiting`` and counters
``vllm:request_success_total`` (by ``finished_reason``), ``vllm:prompt_tokens_total``,
``vllm:generation_tokens_total``, all labelled ``model_name`` and ``engine``. A new boot of the
instance starts every counter from zero again, as a restarted vLLM does.

vLLM publishes its gauges from the engine's steps: a request arriving, each generated token and
a request finishing. Aborting a request (the client closes the connection) is no step, so when
every request in flight is aborted the gauges keep their last values until the engine runs
another request (vllm-project/vllm#22545, open; #29928). That is the default here
(``sticky_gauges=True``); ``sticky_gauges=False`` publishes the gauges on an abort too. Either
way an aborted request moves no counter after the abort: its prompt tokens were counted when it
was admitted, its generated tokens as they came, and it adds nothing to
``request_success_total`` nor to the latency histogram (vllm-project/vllm#31503, #55634).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

ENGINE = "0"
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class VllmMetrics:
    """The engine's load and counters for one boot of a simulated instance; thread-safe."""

    def __init__(self, model: str, max_num_seqs: int = 256, sticky_gauges: bool = True):
        self.model = model
        self.max_num_seqs = max_num_seqs
        self.sticky_gauges = sticky_gauges
        self._cond = threading.Condition()
        self._boot: object = None
        self._running = 0
        self._waiting = 0
        self._shown = {"running": 0, "waiting": 0}  # what the gauges show since the last step
        self._build()

    def _build(self) -> None:
        """Create a fresh registry: every counter at zero, as after a vLLM start."""
        registry = CollectorRegistry()
        labels = ["model_name", "engine"]
        self.registry = registry
        self.running_gauge = Gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            labels,
            registry=registry,
        )
        self.waiting_gauge = Gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            labels,
            registry=registry,
        )
        self.success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*labels, "finished_reason"],
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", labels, registry=registry
        )
        self.generation_tokens = Counter(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            labels,
            registry=registry,
        )
        self.latency = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        values = (self.model, ENGINE)
        for metric in (self.running_gauge, self.waiting_gauge, self.prompt_tokens):
            metric.labels(*values)
        self.generation_tokens.labels(*values)
        self.latency.labels(*values)
        for reason in ("stop", "length", "abort"):
            self.success.labels(*values, reason)

    def note_boot(self, boot: object) -> None:
        """Start from zero when the instance booted again since the last request."""
        with self._cond:
            if boot != self._boot:
                self._boot = boot
                self._running = self._waiting = 0
                self._shown = {"running": 0, "waiting": 0}
                self._build()

    def exposition(self) -> bytes:
        """Return the Prometheus text vLLM's /metrics would serve now."""
        with self._cond:
            registry = self.registry
        return generate_latest(registry)

    @property
    def running(self) -> int:
        """Requests being generated now (the truth, whatever the gauge shows)."""
        with self._cond:
            return self._running

    @property
    def waiting(self) -> int:
        """Requests queued for a free batch slot (the truth, whatever the gauge shows)."""
        with self._cond:
            return self._waiting

    def gauges(self) -> dict[str, int]:
        """Return what the running and waiting gauges show now."""
        with self._cond:
            return dict(self._shown)

    def _step(self) -> None:
        """Publish the true load, as each engine step does. Call with the condition held."""
        values = (self.model, ENGINE)
        self._shown = {"running": self._running, "waiting": self._waiting}
        self.running_gauge.labels(*values).set(self._running)
        self.waiting_gauge.labels(*values).set(self._waiting)

    @contextmanager
    def request(self, prompt_tokens: int, clock, give_up: threading.Event) -> Iterator[Generation]:
        """Hold a batch slot (waiting for one when all max_num_seqs are taken) while generating."""
        values = (self.model, ENGINE)
        with self._cond:
            self._waiting += 1
            self._step()
            while self._running >= self.max_num_seqs and not give_up.is_set():
                self._cond.wait(0.1)
            self._waiting -= 1
            self._running += 1
            self._step()
            registry = self.registry
            self.prompt_tokens.labels(*values).inc(prompt_tokens)
        started = clock()
        generation = Generation(self, registry)
        try:
            yield generation
        finally:
            with self._cond:
                if registry is self.registry:  # not a request from before a restart
                    self._running -= 1
                    if generation.finished_reason is not None:
                        self.success.labels(*values, generation.finished_reason).inc()
                        self.latency.labels(*values).observe(max(0.0, clock() - started))
                        self._step()
                    elif not self.sticky_gauges:
                        self._step()
                self._cond.notify_all()


class Generation:
    """One request's generated tokens, counted as they come."""

    def __init__(self, metrics: VllmMetrics, registry: CollectorRegistry):
        self._metrics = metrics
        self._registry = registry
        self.finished_reason: str | None = None

    def token(self) -> None:
        """Count one generated token: an engine step, which also publishes the gauges."""
        metrics = self._metrics
        with metrics._cond:
            if self._registry is metrics.registry:
                metrics.generation_tokens.labels(metrics.model, ENGINE).inc()
                metrics._step()

    def finish(self, reason: str) -> None:
        """Mark the generation as finished (stop or length); an unfinished one was aborted."""
        self.finished_reason = reason
