"""The instance's real nginx (deploy/instance/health-nginx.conf) run on loopback for tests."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from support import ROOT
from support.liveserver import end_process

DEPLOY = ROOT / "deploy" / "instance"
NGINX_CONF = DEPLOY / "health-nginx.conf"
NGINX_BIN = Path("/usr/sbin/nginx")
INSTALL = DEPLOY / "install.sh"
KEYS_DIR = "/etc/nginx/keys/"  # where compose mounts the key maps install.sh writes
# The lines of the config that name the listen port and the upstreams; tests rewrite them.
LISTEN_LINE = "listen 8001;"
UPSTREAM_LINE = "set $vllm_upstream vllm:8000;"
AGENT_UPSTREAM_LINE = "set $agent_upstream agent:8002;"


def nginx_bin() -> Path:
    """Return the nginx binary, or skip/fail as tests/test_instance_deploy.py explains."""
    if os.environ.get("VASTPANEL_SKIP_NGINX") == "1":
        pytest.skip("VASTPANEL_SKIP_NGINX=1: nginx checks skipped")
    if not os.access(NGINX_BIN, os.X_OK):
        pytest.fail(
            f"nginx is not installed at {NGINX_BIN}: install the Debian package nginx-light "
            "(or nginx), or set VASTPANEL_SKIP_NGINX=1 to skip the nginx checks",
            pytrace=False,
        )
    return NGINX_BIN


def install(target: Path, env_text: str | None = None) -> subprocess.CompletedProcess:
    """Run install.sh into target without systemd, with .env holding env_text if given."""
    target.mkdir(parents=True, exist_ok=True)
    if env_text is not None:
        (target / ".env").write_text(env_text)
    return subprocess.run(
        ["sh", str(INSTALL), "--dir", str(target), "--no-systemd"],
        capture_output=True,
        text=True,
        timeout=30,
    )


def installed_keys(tmp_path: Path, env_text: str) -> Path:
    """Write the key maps with install.sh into tmp_path/stack; return their directory."""
    done = install(tmp_path / "stack", env_text)
    assert done.returncode == 0, done.stderr
    return tmp_path / "stack" / "nginx-keys"


def render_for_loopback(
    text: str, listen_port: int, upstream_port: int, keys: Path, agent_port: int | None = None
) -> str:
    """The shipped config, with only its listen port, upstreams and key directory replaced."""
    assert text.count(LISTEN_LINE) == 1 and text.count(UPSTREAM_LINE) == 1
    text = text.replace(LISTEN_LINE, f"listen 127.0.0.1:{listen_port};")
    text = text.replace(KEYS_DIR, f"{keys}/")
    text = text.replace(UPSTREAM_LINE, f"set $vllm_upstream 127.0.0.1:{upstream_port};")
    if agent_port is not None:
        assert text.count(AGENT_UPSTREAM_LINE) == 1
        text = text.replace(AGENT_UPSTREAM_LINE, f"set $agent_upstream 127.0.0.1:{agent_port};")
    return text


@contextmanager
def running_nginx(binary: Path, conf_text: str, workdir: Path, port: int) -> Iterator[None]:
    """Run nginx in the foreground with this config until the block ends."""
    conf = workdir / "nginx.conf"
    conf.write_text(conf_text, encoding="utf-8")
    log_path = workdir / "nginx.out"
    cmd = [str(binary), "-p", str(workdir), "-e", str(workdir / "error.log")]
    cmd += ["-c", str(conf), "-g", f"pid {workdir / 'nginx.pid'}; daemon off;"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                pytest.fail(f"nginx exited with {proc.returncode}: {log_path.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"nginx did not listen on {port}: {log_path.read_text()}")
                time.sleep(0.05)
        yield
    finally:
        end_process(proc)
