"""The instance's real nginx (deploy/instance/health-nginx.conf) run on loopback for tests."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from requests.adapters import HTTPAdapter

from support import ROOT
from support.liveserver import end_process

DEPLOY = ROOT / "deploy" / "instance"
NGINX_CONF = DEPLOY / "health-nginx.conf"
NGINX_BIN = Path("/usr/sbin/nginx")
INSTALL = DEPLOY / "install.sh"
KEYS_DIR = "/etc/nginx/keys/"  # where compose mounts the key maps install.sh writes
TLS_DIR = "/etc/nginx/tls/"  # where compose mounts the listen line and certificate it writes
# The lines of the config that name the listen port and the upstreams; tests rewrite them.
LISTEN_INCLUDE = f"include {TLS_DIR}listen.conf;"
LISTEN_PORT = "listen 8001"  # in the listen.conf install.sh writes, with " ssl;" or ";"
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


def install(
    target: Path,
    env_text: str | None = None,
    *,
    instance_env: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run install.sh into target without systemd, with .env holding env_text if given.

    The agent's file goes to target's sibling agent.env, and vast.ai's /etc/environment is
    played by target's sibling etc-environment (holding instance_env if given): a test never
    reads or writes the machine's /etc.
    """
    target.mkdir(parents=True, exist_ok=True)
    if env_text is not None:
        (target / ".env").write_text(env_text)
    etc_environment = target.parent / "etc-environment"
    if instance_env is not None:
        etc_environment.write_text(instance_env)
    command = ["sh", str(INSTALL), "--dir", str(target), "--no-systemd"]
    command += ["--agent-env", str(agent_env_file(target))]
    command += ["--instance-env", str(etc_environment)]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINER_")}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=30, env={**clean, **(env or {})}
    )


def agent_env_file(target: Path) -> Path:
    """Where install() has install.sh write the agent's file (/etc/vastpanel-agent.env)."""
    return target.parent / "agent.env"


def installed_keys(tmp_path: Path, env_text: str) -> Path:
    """Write the key maps (and TLS files) with install.sh into tmp_path/stack; return the maps."""
    done = install(tmp_path / "stack", env_text)
    assert done.returncode == 0, done.stderr
    return tmp_path / "stack" / "nginx-keys"


def installed_tls(tmp_path: Path, env_text: str) -> tuple[Path, str]:
    """Like installed_keys, for a .env that keeps TLS on: the maps and the printed pin."""
    done = install(tmp_path / "stack", env_text)
    assert done.returncode == 0, done.stderr
    return tmp_path / "stack" / "nginx-keys", printed_fingerprint(done)


class _PinnedAdapter(HTTPAdapter):
    def __init__(self, fingerprint: str):
        self.fingerprint = fingerprint
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs.update(cert_reqs="CERT_NONE", assert_fingerprint=self.fingerprint)
        super().init_poolmanager(*args, **kwargs)


def pinned_session(fingerprint: str) -> requests.Session:
    """A client of the instance's nginx that accepts only the certificate with this pin."""
    session = requests.Session()
    session.trust_env = False  # no CA bundle from the environment either
    session.verify = False  # no CA: the pin checks the certificate
    session.mount("https://", _PinnedAdapter(fingerprint))
    return session


def printed_fingerprint(done: subprocess.CompletedProcess) -> str:
    """The certificate pin install.sh printed, in the form the panel takes it (64 hex digits)."""
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("VAST_INSTANCE_TLS_")]
    match = re.fullmatch(r"VAST_INSTANCE_TLS_FINGERPRINT=([0-9a-f]{64})", line)
    assert match, line
    return match[1]


def render_for_loopback(
    text: str, listen_port: int, upstream_port: int, keys: Path, agent_port: int | None = None
) -> str:
    """The shipped config with only its listen port, upstreams and directories replaced.

    The listen line comes from the listen.conf install.sh wrote beside keys (nginx-tls/):
    TLS with its certificate, or plain HTTP when the .env said INSTANCE_PLAIN_HTTP=true.
    """
    assert text.count(LISTEN_INCLUDE) == 1 and text.count(UPSTREAM_LINE) == 1
    tls = keys.parent / "nginx-tls"
    listen = (tls / "listen.conf").read_text(encoding="utf-8")
    assert listen.count(LISTEN_PORT) == 1
    listen = listen.replace(LISTEN_PORT, f"listen 127.0.0.1:{listen_port}")
    text = text.replace(LISTEN_INCLUDE, listen.replace(TLS_DIR, f"{tls}/"))
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
