"""Run the simulator standalone: ``python -m vastpanel.simulator --port 0 --api-key KEY``."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from .backend import LlmConfig
from .runner import Simulator


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m vastpanel.simulator", description="A fake vast.ai API on loopback."
    )
    parser.add_argument("--port", type=int, default=0, help="API port (0 picks a free one)")
    parser.add_argument("--llm-port", type=int, default=0, help="LLM stack port (0: free one)")
    parser.add_argument("--api-key", default="sim-key", help="the only key the API accepts")
    parser.add_argument("--instance-id", type=int, default=12345)
    parser.add_argument("--initial-state", choices=("stopped", "running", "creating"))
    parser.add_argument("--schedule-delay", type=float, default=2.0)
    parser.add_argument("--load-delay", type=float, default=5.0)
    parser.add_argument("--warm-delay", type=float, default=3.0)
    parser.add_argument("--stop-delay", type=float, default=1.0)
    parser.add_argument("--create-delay", type=float, default=0.0)
    parser.add_argument("--rate-limit-get", type=float, default=2.0, help="min seconds, 0: off")
    parser.add_argument("--rate-limit-put", type=float, default=1.0, help="min seconds, 0: off")
    parser.add_argument("--token-delay", type=float, default=0.0, help="LLM seconds per token")
    parser.add_argument(
        "--no-sticky-gauges",
        action="store_true",
        help="vLLM's gauges drop at once when every request is aborted (not as vLLM does)",
    )
    parser.add_argument(
        "--clip-charges",
        action="store_true",
        help="clip each charges row to the asked day range (undocumented reading)",
    )
    parser.add_argument(
        "--contract-ends-at", type=float, help="the instance's end_date, epoch seconds"
    )
    parser.add_argument(
        "--gpu-taken",
        action="store_true",
        help="another renter has the instance's GPU: a start stays in scheduling until "
        "POST /_sim/market {action: free}",
    )
    parser.add_argument("--verbose", action="store_true", help="print one line per request")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve until interrupted; print the API URL first, on its own line."""
    args = parse_args(argv)
    rate_limit = {"GET": args.rate_limit_get, "PUT": args.rate_limit_put}
    sim = Simulator(
        api_key=args.api_key,
        instance_id=args.instance_id,
        initial_state=args.initial_state or "stopped",
        schedule_delay=args.schedule_delay,
        load_delay=args.load_delay,
        warm_delay=args.warm_delay,
        stop_delay=args.stop_delay,
        create_delay=args.create_delay,
        rate_limit={k: v for k, v in rate_limit.items() if v > 0},
        port=args.port,
        llm_port=args.llm_port,
        llm=LlmConfig(
            token_delay_s=max(0.0, args.token_delay), sticky_gauges=not args.no_sticky_gauges
        ),
        quiet=not args.verbose,
        contract_ends_at=args.contract_ends_at,
        clip_charges_to_range=args.clip_charges,
        gpu_taken=args.gpu_taken,
    )
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with sim:
        print(sim.url, flush=True)
        print(
            f"vast.ai simulator: instance {sim.instance_id}, LLM stack on {sim.llm_url}, "
            f"control at {sim.url}/_sim/state. Ctrl-C to stop.",
            file=sys.stderr,
            flush=True,
        )
        try:
            done.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
