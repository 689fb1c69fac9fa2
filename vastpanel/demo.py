"""`python -m vastpanel.demo`: the panel against the built-in vast.ai simulator, ready to try."""

from __future__ import annotations

import argparse
import os
import secrets

DEMO_INSTANCE_ID = 4242


def demo_environment(sim_url: str, sim_key: str, control_key: str, idle_minutes: float) -> dict:
    """Return the settings that point a panel at the simulator, marked as simulated."""
    return {
        "VAST_URL": sim_url,
        "VAST_API_KEY": sim_key,
        "VAST_INSTANCE_ID": str(DEMO_INSTANCE_ID),
        "CONTROL_API_KEY": control_key,
        "VAST_AUTO_SHUTDOWN": "true",
        "VAST_AUTO_SHUTDOWN_MINUTES": str(idle_minutes),
        "VAST_WATCHDOG_INTERVAL_S": "10",
        "VAST_METRICS_EVERY_S": "5",  # the page shows the simulated LLM's load within seconds
        "VAST_WAIT_TIMEOUT_S": "120",
        "VAST_DB_PATH": os.environ.get("VAST_DB_PATH") or "data/demo.db",
        "VASTPANEL_SIMULATED": "true",
    }


def main(argv: list[str] | None = None) -> None:
    """Run the panel against a simulated vast.ai instance: no account, GPU or internet needed."""
    parser = argparse.ArgumentParser(prog="python -m vastpanel.demo", description=main.__doc__)
    parser.add_argument("--port", type=int, default=5000, help="panel port on 127.0.0.1")
    parser.add_argument("--idle-minutes", type=float, default=2.0, help="auto-shutdown idle time")
    args = parser.parse_args(argv)

    from werkzeug.serving import run_simple

    from . import create_app
    from .simulator import LlmConfig, Simulator

    sim = Simulator(
        api_key=secrets.token_hex(16),
        instance_id=DEMO_INSTANCE_ID,
        schedule_delay=3.0,
        load_delay=6.0,
        warm_delay=4.0,
        stop_delay=1.0,
        # A tenth of a second per token: a chat of a few hundred tokens runs long enough for
        # the page to show the LLM's load (vLLM's metrics, read from the simulated instance).
        llm=LlmConfig(token_delay_s=0.1),
    )
    control_key = os.environ.get("CONTROL_API_KEY") or f"demo-{secrets.token_hex(8)}"
    with sim:
        os.environ.update(demo_environment(sim.url, sim.api_key, control_key, args.idle_minutes))
        app = create_app()
        base = f"http://127.0.0.1:{args.port}"
        print(
            "\n".join(
                [
                    "vastpanel demo: a SIMULATED vast.ai instance (no real GPU, nothing billed).",
                    f"  panel:        {base}/",
                    f"  control key:  {control_key}   (sign in with it; API header X-API-Key)",
                    f"  auto-shutdown after {args.idle_minutes:g} idle minutes",
                    f"  try:          curl -s -H 'X-API-Key: {control_key}' {base}/infra/vast/status",
                    "  LLM load:     once running, chat with the simulated endpoint, e.g.",
                    f"                curl -sN {sim.llm_url}/v1/chat/completions -H 'Content-Type: "
                    'application/json\' -d \'{"messages": [{"role": "user", "content": '
                    '"hi"}], "max_tokens": 300, "stream": true}\'',
                    "                and watch the page's LLM load and the countdown pause.",
                    "Ctrl-C stops the panel and the simulator.",
                ]
            ),
            flush=True,
        )
        run_simple("127.0.0.1", args.port, app, threaded=True, use_reloader=False)


if __name__ == "__main__":
    main()
