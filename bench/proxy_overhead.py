"""Proxy overhead: the simulator's LLM called directly against the same through the panel's /v1/.

On one production server (gunicorn with the repo's config) against the simulator, with the
instance running and healthy. The simulator runs in its own process: in the benchmark's process
its LLM would share one GIL with the load's clients, which slows the direct calls alone.
1. small non-streaming chat completions, N concurrent keep-alive clients for S seconds, first
   straight to the simulated LLM, then through the panel: p50 and requests/s of both, in R
   rounds; the ratio and the added p50 are the rounds' medians;
2. streamed completions one after another, each on a new connection: time to the first byte
   of the answer on a plain socket, direct and through the panel (median);
3. 50 streams held open through the panel while one client posts /infra/vast/activity (and
   reads /healthz and the page's status partial): their p99.
Targets: added p50 <= 3 ms, throughput ratio >= 0.7, added time to first byte <= 5 ms,
/activity p99 <= 100 ms with 50 open streams.

    python3 bench/proxy_overhead.py [--clients 4] [--seconds 10] [--rounds 3] [--streams 50]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time

import requests
from _support import (
    CONTROL_KEY,
    api_headers,
    child_pids,
    cpu_seconds,
    percentile,
    run_load,
    stack,
)

from support import wait_for
from support.liveserver import signed_in_session

LLM_KEY = "bench-llm-key-0123456789abcdef"
BODY = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
MAX_REQUESTS = 500_000
TTFB_SAMPLES = 40
TARGETS = {"added_p50_ms": 3.0, "throughput_ratio": 0.7, "added_ttfb_ms": 5.0, "activity_p99": 100}


def completions(name: str, url: str, clients: int, seconds: float, headers: dict[str, str]):
    """Load one chat completions URL; return its LoadResult."""

    def send(session: requests.Session) -> requests.Response:
        return session.post(url, json=BODY, headers=headers, timeout=30)

    result = run_load(name, send, clients=clients, duration_s=seconds, max_requests=MAX_REQUESTS)
    print(result.line(), flush=True)
    for sample in result.error_samples:
        print(f"  {name} error: {sample}")
    return result


def first_byte_ms(url: str, auth: str | None, samples: int) -> list[float]:
    """Open streamed completions one at a time; return each time to the first byte, in ms.

    Measured on a plain socket (the request written in one piece, the clock stopped when the
    first byte of the answer arrives), so no client library's own work is counted.
    """
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    path = "/" + url.split("//", 1)[1].split("/", 1)[1]
    body = json.dumps({**BODY, "stream": True, "max_tokens": 3}).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
        + (f"Authorization: Bearer {auth}\r\n" if auth else "")
        + "\r\n"
    ).encode()
    times = []
    for _ in range(samples):
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sent = time.perf_counter()
            sock.sendall(head + body)
            answer = sock.recv(65536)
            times.append((time.perf_counter() - sent) * 1000)
            while b"[DONE]" not in answer:  # the rest of the stream, to its end
                more = sock.recv(65536)
                if not more:
                    break
                answer += more
        if not answer.startswith(b"HTTP/1.1 200") or b"[DONE]" not in answer:
            raise RuntimeError(f"stream from {url} failed: {answer[:200]!r}")
    return times


def open_streams(url: str, count: int, tokens: int) -> tuple[list[threading.Thread], dict]:
    """Start `count` long streamed completions through the panel; return their threads."""
    stats = {"open": 0, "done": 0, "errors": 0}
    lock = threading.Lock()
    body = {**BODY, "stream": True, "max_tokens": tokens}

    def stream() -> None:
        try:
            with requests.post(
                url, json=body, headers={"Authorization": f"Bearer {LLM_KEY}"}, stream=True,
                timeout=120,
            ) as r:  # fmt: skip
                r.raise_for_status()
                with lock:
                    stats["open"] += 1
                for _ in r.iter_content(None):
                    pass
            with lock:
                stats["done"] += 1
        except requests.RequestException:
            with lock:
                stats["errors"] += 1

    threads = [threading.Thread(target=stream, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads, stats


def probe(name: str, call, samples: int) -> list[float]:
    """Call one endpoint `samples` times one after another; return the latencies in ms."""
    times = []
    for _ in range(samples):
        sent = time.perf_counter()
        response = call()
        times.append((time.perf_counter() - sent) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{name} answered {response.status_code}")
        time.sleep(0.02)
    print(
        f"{name:28} {samples} calls during the open streams: p50 {percentile(times, 50):.1f} ms, "
        f"p99 {percentile(times, 99):.1f} ms, max {max(times):.1f} ms",
        flush=True,
    )
    return times


def main(argv: list[str] | None = None) -> int:
    """Measure direct against proxied, print the figures and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (4)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per load phase (10)")
    parser.add_argument("--rounds", type=int, default=3, help="direct+proxied rounds (3)")
    parser.add_argument("--streams", type=int, default=50, help="streams held open (50)")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers (1)")
    args = parser.parse_args(argv)
    env = {"LLM_API_KEYS": LLM_KEY, "VAST_AUTO_SHUTDOWN_MINUTES": "60"}
    with stack(workers=args.workers, env=env, sim_process=True) as (sim, server, _):
        started = server.api("POST", "/power/on", json={"wait_for_health": True}, timeout=60)
        assert started.status_code == 200, started.text
        direct_url = sim.llm_url + "/v1/chat/completions"
        proxy_url = server.url + "/v1/chat/completions"
        bearer = {"Authorization": f"Bearer {LLM_KEY}"}
        print(
            f"{args.clients} concurrent keep-alive clients, {args.seconds:g} s per phase, "
            f"gunicorn workers={args.workers}; small completions ({BODY['max_tokens']} tokens)"
        )
        completions("warm-up direct", direct_url, args.clients, 2, {})
        completions("warm-up proxy", proxy_url, args.clients, 2, bearer)
        workers = child_pids(server.process.pid)
        ratios, added, errors, cpu_s, proxied_count = [], [], 0, 0.0, 0
        for round_no in range(1, args.rounds + 1):
            # Direct and proxied back to back, round after round: a disturbance of the machine
            # during one phase moves one round's ratio, not the median.
            direct = completions(f"{round_no}: direct", direct_url, args.clients, args.seconds, {})
            cpu_before = cpu_seconds(workers)
            proxied = completions(
                f"{round_no}: through the panel", proxy_url, args.clients, args.seconds, bearer
            )
            cpu_s += cpu_seconds(workers) - cpu_before
            proxied_count += proxied.count
            ratios.append(proxied.rate / direct.rate if direct.rate else 0.0)
            added.append(proxied.ms(50) - direct.ms(50))
            errors += direct.errors + proxied.errors
            print(f"  round {round_no}: ratio {ratios[-1]:.3f}, added p50 {added[-1]:.2f} ms")
        cpu_ms = cpu_s * 1000 / max(1, proxied_count)
        print(f"panel CPU per proxied request: {cpu_ms:.2f} ms (all workers)")
        added_p50 = statistics.median(added)
        ratio = statistics.median(ratios)

        direct_ttfb = statistics.median(first_byte_ms(direct_url, None, TTFB_SAMPLES))
        proxy_ttfb = statistics.median(first_byte_ms(proxy_url, LLM_KEY, TTFB_SAMPLES))
        added_ttfb = proxy_ttfb - direct_ttfb
        print(
            f"time to first byte of a stream (median of {TTFB_SAMPLES}): direct "
            f"{direct_ttfb:.2f} ms, through the panel {proxy_ttfb:.2f} ms"
        )

        sim.set_llm(token_delay_s=0.5)  # 60 tokens: each stream lasts about 30 s
        threads, stats = open_streams(proxy_url, args.streams, 60)
        if not wait_for(lambda: stats["open"] + stats["errors"] >= args.streams, 30):
            raise RuntimeError(f"only {stats} of {args.streams} streams opened")
        page = signed_in_session(server.url, server.control_key)
        headers = api_headers()
        activity = probe(
            "POST /infra/vast/activity",
            lambda: requests.post(
                server.url + "/infra/vast/activity", json={}, headers=headers, timeout=10
            ),
            150,
        )
        probe("GET /healthz", lambda: requests.get(server.url + "/healthz", timeout=10), 50)
        probe("GET page status partial", lambda: page.get(server.url + "/partials/status"), 20)
        in_flight_streams = stats["open"] - stats["done"]
        for thread in threads:
            thread.join(120)
        activity_p99 = percentile(activity, 99)
        print(f"streams: {stats} ({in_flight_streams} still open at the end of the probes)")
        sim.set_llm(token_delay_s=0.0)
        assert CONTROL_KEY  # the key the probes used

    rounds = f"median of {args.rounds} rounds"
    print(f"added p50: {added_p50:.2f} ms, {rounds} (target <= {TARGETS['added_p50_ms']})")
    print(
        f"throughput ratio proxy/direct: {ratio:.3f}, {rounds} "
        f"(target >= {TARGETS['throughput_ratio']})"
    )
    print(f"added time to first byte: {added_ttfb:.2f} ms (target <= {TARGETS['added_ttfb_ms']})")
    print(
        f"/infra/vast/activity p99 with {args.streams} open streams: {activity_p99:.1f} ms "
        f"(target <= {TARGETS['activity_p99']})"
    )
    errors += stats["errors"]
    print(f"errors: {errors}")
    met = (
        added_p50 <= TARGETS["added_p50_ms"]
        and ratio >= TARGETS["throughput_ratio"]
        and added_ttfb <= TARGETS["added_ttfb_ms"]
        and activity_p99 <= TARGETS["activity_p99"]
        and errors == 0
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
