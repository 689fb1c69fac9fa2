"""`python -m vastpanel.demo`: port first, then the banner; the CLI line it prints works."""

from __future__ import annotations

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


def test_the_banner_comes_once_the_port_listens_and_its_cli_line_works(tmp_path):
    process = demo(tmp_path, "--port", "0")
    try:
        lines = []
        while not lines or not lines[-1].startswith("Ctrl-C"):
            line = process.stdout.readline()
            assert line, process.stderr.read()
            lines.append(line.rstrip("\n"))
        url = re.search(r"panel:\s+(\S+)", "\n".join(lines)).group(1)
        # The banner is printed after the port is open: the very first request is answered.
        assert requests.get(url + "signin", timeout=10).status_code == 200
        cli = lines[lines.index(next(x for x in lines if "admin CLI" in x)) + 1].strip()
        words = shlex.split(cli)
        settings = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-"))
        assert {"VAST_URL", "VAST_API_KEY", "VAST_INSTANCE_ID", "VAST_DB_PATH"} <= set(settings)
        assert settings["VAST_AUTO_SHUTDOWN_MINUTES"] == "2.0"  # the countdown the server uses
        assert "CONTROL_API_KEY" not in settings
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
