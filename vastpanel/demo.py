"""`python -m vastpanel.demo`: the panel against the built-in vast.ai simulator, ready to try."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import sys

DEMO_INSTANCE_ID = 4242


def demo_environment(
    sim_url: str,
    sim_key: str,
    control_key: str,
    idle_minutes: float,
    budget_usd: float = 2.0,
    llm_key: str = "",
) -> dict:
    """Return the settings that point a panel at the simulator, marked as simulated."""
    return {
        "VAST_URL": sim_url,
        "VAST_API_KEY": sim_key,
        "VAST_INSTANCE_ID": str(DEMO_INSTANCE_ID),
        "CONTROL_API_KEY": control_key,
        "LLM_API_KEYS": llm_key,
        "VAST_AUTO_SHUTDOWN": "true",
        "VAST_AUTO_SHUTDOWN_MINUTES": str(idle_minutes),
        # Inside the short idle time, so the warning says something when it shows.
        "VAST_WARN_MINUTES": str(min(5.0, idle_minutes / 2)),
        "VAST_WATCHDOG_INTERVAL_S": "10",
        "VAST_METRICS_EVERY_S": "5",  # the page shows the simulated LLM's load within seconds
        "VAST_WAIT_TIMEOUT_S": "120",
        "VAST_DB_PATH": os.environ.get("VAST_DB_PATH") or "data/demo.db",
        "VASTPANEL_SIMULATED": "true",
        # The simulated instance is on 127.0.0.1 and serves plain HTTP: allowed for it alone.
        "VAST_INSTANCE_PLAIN_HTTP": "true",
        "VAST_ALLOW_LOOPBACK_INSTANCE_FOR_TESTS": "true",
        # A small daily budget, so the page's budget bar moves while you watch.
        "VAST_BUDGET_USD": str(budget_usd),
        "VAST_BUDGET_PERIOD": "day",
    }


def main(argv: list[str] | None = None) -> None:
    """Run the panel against a simulated vast.ai instance: no account, GPU or internet needed."""
    parser = argparse.ArgumentParser(prog="python -m vastpanel.demo", description=main.__doc__)
    parser.add_argument(
        "--port", type=int, default=5000, help="panel port on 127.0.0.1 (0: any free port)"
    )
    parser.add_argument("--idle-minutes", type=float, default=2.0, help="auto-shutdown idle time")
    parser.add_argument("--budget", type=float, default=2.0, help="daily budget in $ (simulated)")
    parser.add_argument(
        "--gpu-taken",
        action="store_true",
        help="someone else rents the first machine's GPU: a start is stuck, and the page "
        "offers a move to another machine",
    )
    args = parser.parse_args(argv)

    from werkzeug.serving import make_server

    # The port first: on a conflict nothing else has started and no banner has promised it.
    try:
        sock = listening_socket(args.port)
    except OSError as exc:
        raise SystemExit(
            f"vastpanel demo: cannot listen on 127.0.0.1:{args.port} ({exc.strerror}). "
            "Another program uses that port: pick another with --port, e.g. --port 5001, "
            "or --port 0 for any free port."
        ) from None
    port = sock.getsockname()[1]

    from . import Config, create_app
    from .simulator import LlmConfig, Simulator

    # A tenth of a second per token: a chat of a few hundred tokens runs long enough for the
    # page to show the LLM's load (vLLM's metrics, read from the simulated instance).
    llm = LlmConfig(token_delay_s=0.1)
    sim = Simulator(
        api_key=secrets.token_hex(16),
        instance_id=DEMO_INSTANCE_ID,
        schedule_delay=3.0,
        load_delay=6.0,
        warm_delay=4.0,
        stop_delay=1.0,
        create_delay=3.0,  # a new instance from a move is created, then loads like a start
        llm=llm,
        gpu_taken=args.gpu_taken,
    )
    control_key = os.environ.get("CONTROL_API_KEY") or f"demo-{secrets.token_hex(8)}"
    llm_key = f"demo-llm-{secrets.token_hex(8)}"
    with sim:
        env = demo_environment(
            sim.url, sim.api_key, control_key, args.idle_minutes, args.budget, llm_key
        )
        env["VAST_DB_PATH"] = os.path.abspath(env["VAST_DB_PATH"])
        # The demo's settings over the environment's (SECRET_KEY, SESSION_COOKIE_SECURE, ...).
        app = create_app(Config.from_env({**os.environ, **env}))
        server = make_server("127.0.0.1", port, app, threaded=True, fd=sock.fileno())
        print(banner(f"http://127.0.0.1:{port}", env, args, model=llm.model), flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()


def banner(base: str, env: dict, args: argparse.Namespace, *, model: str) -> str:
    """Say what runs where, with the keys, and ready commands for the API, /v1/ and the CLI."""
    control_key, llm_key = env["CONTROL_API_KEY"], env["LLM_API_KEYS"]
    chat = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello"}]})
    # The CLI reads the server's settings, all but the keys it does not use (secrets).
    unused = ("CONTROL_API_KEY", "LLM_API_KEYS")
    cli_env = " ".join(f"{k}={v}" for k, v in env.items() if k not in unused)
    warn = float(env["VAST_WARN_MINUTES"])
    return "\n".join(
        [
            "vastpanel demo: a SIMULATED vast.ai instance (no real GPU, nothing billed).",
            f"  panel:        {base}/",
            f"  control key:  {control_key}   (sign in with it; API header X-API-Key)",
            f"  LLM key:      {llm_key}   (for {base}/v1/: Authorization: Bearer)",
            f"  auto-shutdown after {args.idle_minutes:g} idle minutes (a warning {warn:g} min "
            f"before); budget ${args.budget:g} a day",
            f"  try:          curl -s -H 'X-API-Key: {control_key}' {base}/infra/vast/status",
            "  /v1/ with curl (the first request starts the stopped instance and waits for it):",
            f"    curl -sS {base}/v1/chat/completions -H 'Authorization: Bearer {llm_key}' "
            f"-H 'Content-Type: application/json' -d '{chat}'",
            "  /v1/ from Python (pip install openai):",
            "    from openai import OpenAI",
            f'    client = OpenAI(base_url="{base}/v1", api_key="{llm_key}")',
            f'    answer = client.chat.completions.create(model="{model}", '
            'messages=[{"role": "user", "content": "Hello"}])',
            "    print(answer.choices[0].message.content)",
            '  LLM load:     add "max_tokens": 300, "stream": true to the chat and watch the '
            "page's LLM load and the countdown pause.",
            "  admin CLI (from this folder, in another terminal; the server's settings):",
            f"    {cli_env} {cli_python()} -m flask --app app vast status",
            gpu_taken_line(args.gpu_taken),
            "Ctrl-C stops the panel and the simulator.",
        ]
    )


def gpu_taken_line(gpu_taken: bool) -> str:
    """Say what --gpu-taken shows, or that it exists."""
    if gpu_taken:
        return (
            "  GPU taken:    someone else rents the first machine's GPU (--gpu-taken): Start "
            "stays in scheduling, and the page offers a Move to another machine."
        )
    return "  try --gpu-taken to see a stuck start and a move to another machine."


def listening_socket(port: int) -> socket.socket:
    """Open 127.0.0.1:port for listening (as werkzeug would), or raise OSError."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def cli_python() -> str:
    """Name the Python to run the CLI with: this one, relative when it is the local .venv."""
    relative = os.path.relpath(sys.executable)
    return relative if not relative.startswith("..") else sys.executable


if __name__ == "__main__":
    main()
