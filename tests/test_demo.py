"""`python -m vastpanel.demo`: port first, then the banner; the CLI line it prints works."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys

import pytest
import requests

from support import ROOT, wait_for

pytestmark = pytest.mark.e2e


def demo(tmp_path, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAST_", "CONTROL_"))}
    env["VAST_DB_PATH"] = str(tmp_path / "demo.db")
    return subprocess.Popen(
        [sys.executable, "-m", "vastpanel.demo", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_a_busy_port_is_named_with_the_way_out_and_no_banner(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = demo(tmp_path, "--port", str(port))
        out, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert out == ""  # no URL or key promised for a server that never listened
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err
    assert "Traceback" not in err
    assert not (tmp_path / "demo.db").exists()


def banner_lines(process: subprocess.Popen) -> list[str]:
    """Read the demo's banner up to its last line."""
    lines: list[str] = []
    while not lines or not lines[-1].startswith("Ctrl-C"):
        line = process.stdout.readline()
        assert line, process.stderr.read()
        lines.append(line.rstrip("\n"))
    return lines


def line_after(lines: list[str], heading: str) -> str:
    """Return the line under the banner's line that holds heading."""
    return lines[lines.index(next(x for x in lines if heading in x)) + 1].strip()


def test_the_banner_comes_once_the_port_listens_and_its_cli_line_works(tmp_path):
    process = demo(tmp_path, "--port", "0")
    try:
        lines = banner_lines(process)
        url = re.search(r"panel:\s+(\S+)", "\n".join(lines)).group(1)
        # The banner is printed after the port is open: the very first request is answered.
        assert requests.get(url + "signin", timeout=10).status_code == 200
        cli = line_after(lines, "admin CLI")
        words = shlex.split(cli)
        settings = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-"))
        assert {"VAST_URL", "VAST_API_KEY", "VAST_INSTANCE_ID", "VAST_DB_PATH"} <= set(settings)
        assert settings["VAST_AUTO_SHUTDOWN_MINUTES"] == "2.0"  # the countdown the server uses
        assert "CONTROL_API_KEY" not in settings and "LLM_API_KEYS" not in settings
        command = [w for w in words if w not in {f"{k}={v}" for k, v in settings.items()}]
        result = subprocess.run(
            command,
            cwd=ROOT,
            env={**os.environ, **settings},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result
        assert result.stdout.startswith("Instance 4242: ")
        assert wait_for(lambda: (tmp_path / "demo.db").exists(), 5)
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(30)
        process.stdout.close()
        process.stderr.close()


def test_v1_is_on_and_the_curl_and_python_it_prints_answer_from_the_simulated_model(tmp_path):
    process = demo(tmp_path, "--port", "0", "--idle-minutes", "5")
    try:
        lines = banner_lines(process)
        text = "\n".join(lines)
        key = re.search(r"LLM key:\s+(\S+)", text).group(1)
        curl = line_after(lines, "/v1/ with curl")
        assert curl.startswith("curl ") and f"Bearer {key}" in curl and '"sim-model"' in curl
        # The instance is stopped: the printed request starts it and waits for the answer.
        answered = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=120)
        assert answered.returncode == 0, answered
        body = json.loads(answered.stdout)
        assert body["model"] == "sim-model"
        assert body["choices"][0]["message"]["content"] == (
            "Hello from the simulated vast.ai instance."
        )
        start = lines.index(next(x for x in lines if "/v1/ from Python" in x)) + 1
        snippet = "\n".join(x.strip() for x in lines[start : start + 4])
        assert snippet.startswith("from openai import OpenAI") and key in snippet
        ran = subprocess.run(
            [sys.executable, "-c", snippet], capture_output=True, text=True, timeout=60
        )
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout == "Hello from the simulated vast.ai instance.\n"
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(30)
        log = process.stderr.read()
        process.stdout.close()
        process.stderr.close()
    assert "event=power_on_requested actor=proxy" in log
    assert "VAST_WARN_MINUTES" not in log  # the demo's warning fits in its idle time


def test_gpu_taken_shows_a_stuck_start_and_a_move_to_another_machine(tmp_path):
    process = demo(tmp_path, "--port", "0", "--gpu-taken")
    try:
        lines = banner_lines(process)
        text = "\n".join(lines)
        assert "GPU taken:" in text and "--gpu-taken" in text
        url = re.search(r"panel:\s+(\S+)", text).group(1).rstrip("/")
        key = re.search(r"control key:\s+(\S+)", text).group(1)

        def api(method: str, path: str, **kwargs):
            headers = {"X-API-Key": key}
            return requests.request(
                method, f"{url}/infra/vast{path}", headers=headers, timeout=30, **kwargs
            )

        assert api("POST", "/power/on", json={"wait_for_health": False}).status_code == 200
        stuck = wait_for(lambda: api("GET", "/status").json()["stuck"], 15)
        assert stuck and stuck["queued"], api("GET", "/status").json()
        offers = api("GET", "/offers").json()["offers"]
        assert offers and all(o["machine_id"] != stuck["machine_id"] for o in offers)
        assert api("POST", "/move", json={}).status_code == 202
        # The demo's watchdog carries the move out: create, load, health, switch.
        done = wait_for(lambda: (m := api("GET", "/move").json())["state"] in ("done", "failed")
                        and m, 90, every=0.5)  # fmt: skip
        assert done and done["state"] == "done", done
        assert done["new_machine_id"] == offers[0]["machine_id"]
        status = api("GET", "/status").json()
        assert status["instance_id"] == done["new_instance_id"] and status["status"] == "running"
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(30)
        process.stdout.close()
        process.stderr.close()
