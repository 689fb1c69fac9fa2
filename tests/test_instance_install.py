"""install.sh on a VM instance, and the instance guide's steps in the order written.

install.sh runs into temporary folders without systemd, with a stand-in for the
/etc/environment vast.ai writes on VM instances; nothing here reads or writes the
machine's /etc. nginx checks the config it produced (`nginx -t`).
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import re
import ssl
import subprocess
from pathlib import Path

import pytest
import yaml

from support import instance_nginx
from support.instance_nginx import (
    DEPLOY,
    TLS_DIR,
    agent_env_file,
    install,
    printed_fingerprint,
    render_for_loopback,
)
from support.liveserver import free_port

API_KEY = "test-vllm.key+0123456789abcdef"  # . and + are regex characters in nginx's map
METRICS_TOKEN = "test-metrics-token-0123456789"


@pytest.fixture
def nginx_bin() -> Path:
    return instance_nginx.nginx_bin()


def env_values(target: Path, name: str) -> list[str]:
    lines = (target / ".env").read_text().splitlines()
    return [line.split("=", 1)[1] for line in lines if line.startswith(name + "=")]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under folder, by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def cert_fingerprint(target: Path) -> str:
    """SHA-256 over the DER certificate in target/nginx-tls, as TLS clients pin it."""
    pem = (target / "nginx-tls" / "cert.pem").read_text()
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def unit_exec_start(target: Path) -> str:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(target / "llm-stack.service", encoding="utf-8")
    return parser["Service"]["ExecStart"]


def test_install_generates_the_key_once_and_keeps_it_private(tmp_path):
    target = tmp_path / "stack"
    first = install(target, "HUGGING_FACE_HUB_TOKEN=hf_x\nVLLM_API_KEY=\n")
    assert first.returncode == 0, first.stderr
    (key,) = env_values(target, "VLLM_API_KEY")
    assert len(key) == 64 and int(key, 16) >= 0
    assert key not in first.stdout + first.stderr  # never printed
    assert (target / ".env").stat().st_mode & 0o777 == 0o600
    for name in ("compose.yaml", "health-nginx.conf", "llm-stack.service"):
        assert (target / name).is_file()
    keys = target / "nginx-keys"
    assert (keys / "api-key.map").read_text() == f'default 0;\n"~^Bearer {key}$" 1;\n'
    assert (keys / "metrics-token.map").read_text().startswith("default 1;")
    assert (keys / "api-key.map").stat().st_mode & 0o777 == 0o600

    again = install(target)
    assert again.returncode == 0, again.stderr
    assert env_values(target, "VLLM_API_KEY") == [key]  # kept, not regenerated


def test_install_keeps_given_keys_and_refuses_unusable_ones(tmp_path):
    target = tmp_path / "stack"
    done = install(target, f"VLLM_API_KEY={API_KEY}\nMETRICS_TOKEN={METRICS_TOKEN}\n")
    assert done.returncode == 0, done.stderr
    assert env_values(target, "VLLM_API_KEY") == [API_KEY]
    assert (
        f'"~^Bearer {METRICS_TOKEN}$" 1;' in (target / "nginx-keys/metrics-token.map").read_text()
    )
    for bad in ["short", 'with"quote-0123456789', "with space 0123456789"]:
        refused = install(tmp_path / "bad", f"VLLM_API_KEY={bad}\n")
        assert refused.returncode == 1 and "VLLM_API_KEY" in refused.stderr


@pytest.mark.parametrize(
    ("env_text", "named"),
    [
        ("VLLM_API_KEY=short\n", "VLLM_API_KEY"),
        ("METRICS_TOKEN=bad token 0123456789\n", "METRICS_TOKEN"),
        ("INSTANCE_PLAIN_HTTP=maybe\n", "INSTANCE_PLAIN_HTTP"),
        ("VAST_AGENT_SECRET=short\n", "VAST_AGENT_SECRET"),
        ("VAST_AGENT_SECRET=agent-secret-0123456789\n", "CONTAINER_API_KEY"),  # none found
    ],
)
def test_a_refused_install_names_the_setting_and_changes_nothing(tmp_path, env_text, named):
    target = tmp_path / "stack"
    target.mkdir()
    (target / ".env").write_text(env_text)
    refused = install(target)
    assert refused.returncode == 1 and named in refused.stderr
    assert tree(target) == {".env": env_text.encode()}
    assert not agent_env_file(target).exists()


def test_install_makes_a_tls_certificate_once_and_prints_its_pin(tmp_path):
    target = tmp_path / "stack"
    first = install(target, "HUGGING_FACE_HUB_TOKEN=hf_x\n")
    assert first.returncode == 0, first.stderr
    tls = target / "nginx-tls"
    pin = printed_fingerprint(first)
    assert pin == cert_fingerprint(target)
    assert (tls / "key.pem").stat().st_mode & 0o777 == 0o600
    assert "BEGIN" not in first.stdout + first.stderr  # neither the key nor the certificate
    listen = (tls / "listen.conf").read_text()
    assert "listen 8001 ssl;" in listen and f"ssl_certificate_key {TLS_DIR}key.pem;" in listen
    cert = (tls / "cert.pem").read_bytes()
    again = install(target)
    assert again.returncode == 0, again.stderr
    assert printed_fingerprint(again) == pin  # the panel's pin stays valid across installs
    assert (tls / "cert.pem").read_bytes() == cert
    assert sorted(p.name for p in tls.iterdir()) == ["cert.pem", "key.pem", "listen.conf"]


def test_plain_http_only_when_the_env_says_so(tmp_path):
    target = tmp_path / "stack"
    done = install(target, "HUGGING_FACE_HUB_TOKEN=hf_x\nINSTANCE_PLAIN_HTTP=true\n")
    assert done.returncode == 0, done.stderr
    assert "VAST_INSTANCE_TLS_FINGERPRINT" not in done.stdout
    assert "WARNING: port 8001 serves plain HTTP" in done.stdout
    listen = (target / "nginx-tls" / "listen.conf").read_text()
    assert "listen 8001;" in listen and "ssl" not in listen
    assert not (target / "nginx-tls" / "key.pem").exists()


INSTANCE_KEY = "0123abcd" * 8  # what vast.ai writes as CONTAINER_API_KEY
AGENT_SECRET = "agent-secret-0123456789abcdef"
VM_ENVIRONMENT = (  # /etc/environment as vast.ai writes it on a VM instance
    'PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"\n'
    f'CONTAINER_ID="4711"\nCONTAINER_API_KEY="{INSTANCE_KEY}"\nPUBLIC_IPADDR="203.0.113.7"\n'
)


def test_the_agent_secret_turns_the_switch_on_with_a_root_only_file(tmp_path):
    target = tmp_path / "stack"
    off = install(target, "HUGGING_FACE_HUB_TOKEN=hf_x\n", instance_env=VM_ENVIRONMENT)
    assert off.returncode == 0, off.stderr
    assert "dead-man switch off" in off.stdout
    assert unit_exec_start(target) == "/usr/bin/docker compose up -d"
    assert not agent_env_file(target).exists()

    with (target / ".env").open("a") as env:
        env.write(f"VAST_AGENT_SECRET={AGENT_SECRET}\n")
    on = install(target)
    assert on.returncode == 0, on.stderr
    assert unit_exec_start(target) == "/usr/bin/docker compose --profile agent up -d"
    agent_file = agent_env_file(target)
    stat = agent_file.stat()
    assert stat.st_mode & 0o777 == 0o600
    assert stat.st_uid == os.geteuid()
    if os.geteuid() == 0:
        assert stat.st_uid == 0 and stat.st_gid == 0  # root's, as on the instance
    values = dict(line.split("=", 1) for line in agent_file.read_text().splitlines() if "=" in line)
    assert values == {
        "VAST_AGENT_SECRET": AGENT_SECRET,
        "CONTAINER_ID": "4711",
        "CONTAINER_API_KEY": INSTANCE_KEY,
    }
    assert INSTANCE_KEY not in (target / ".env").read_text()
    output = on.stdout + on.stderr + off.stdout + off.stderr
    assert INSTANCE_KEY not in output and AGENT_SECRET not in output
    assert "dead-man switch on for instance 4711" in on.stdout


def test_the_instance_key_moves_out_of_an_env_written_by_the_old_guide(tmp_path):
    target = tmp_path / "stack"
    old_env = (
        f"HUGGING_FACE_HUB_TOKEN=hf_x\nVAST_AGENT_SECRET={AGENT_SECRET}\n"
        f"CONTAINER_ID=4711\nCONTAINER_API_KEY={INSTANCE_KEY}\n"
    )
    done = install(target, old_env)  # no /etc/environment: a container-era .env
    assert done.returncode == 0, done.stderr
    assert f"CONTAINER_API_KEY={INSTANCE_KEY}" in agent_env_file(target).read_text()
    assert "CONTAINER_API_KEY" not in (target / ".env").read_text()
    assert "removed CONTAINER_API_KEY from" in done.stdout


def test_the_environment_wins_over_vasts_file(tmp_path):
    target = tmp_path / "stack"
    done = install(
        target,
        f"VAST_AGENT_SECRET={AGENT_SECRET}\n",
        instance_env=VM_ENVIRONMENT,
        env={"CONTAINER_ID": "99", "CONTAINER_API_KEY": "key-from-the-shell"},
    )
    assert done.returncode == 0, done.stderr
    text = agent_env_file(target).read_text()
    assert "CONTAINER_ID=99\n" in text and "CONTAINER_API_KEY=key-from-the-shell\n" in text


# --------------------------------------------------------------------------- the guide, in order

README = DEPLOY / "README.md"


def guide_block(after: str, language: str = "bash") -> str:
    """The first fenced block of the instance guide after the line starting with `after`."""
    text = README.read_text(encoding="utf-8")
    start = text.index("\n" + after)
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(text, start)
    assert match, after
    return match[1]


def step_2_env() -> str:
    """The .env of step 2, exactly as the guide shows it (its heredoc)."""
    block = guide_block("## 2. Install the stack")
    match = re.search(r"cat > \.env <<'EOF'\n(.*?\n)EOF\n", block, re.S)
    assert match, block
    return match[1]


REQUIRED = re.compile(r"\$\{([A-Z_][A-Z0-9_]*):\?")


def assert_stack_complete(target: Path, profiles: set[str]) -> None:
    """Check what compose would need to start the services of the active profiles."""
    compose = yaml.safe_load((target / "compose.yaml").read_text())
    env = {}
    for line in (target / ".env").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            name, value = line.split("=", 1)
            env[name.strip()] = value.strip()
    for name, service in compose["services"].items():
        if set(service.get("profiles", [])) - profiles:
            continue  # not started
        for required in REQUIRED.findall(json.dumps(service)):
            assert env.get(required), f"{name} needs {required} in .env"
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith("./"):
                assert (target / source).exists(), f"{name} mounts {source}: missing"
            elif source == "/etc/vastpanel-agent.env":
                assert agent_env_file(target).is_file(), f"{name} mounts {source}: missing"


def test_the_guides_steps_work_in_the_order_written(tmp_path, nginx_bin):
    target = tmp_path / "stack"
    # Step 2: the .env as shown, then install.sh, on a VM where vast.ai wrote /etc/environment.
    done = install(target, step_2_env(), instance_env=VM_ENVIRONMENT)
    assert done.returncode == 0, done.stderr
    assert unit_exec_start(target) == "/usr/bin/docker compose up -d"
    assert_stack_complete(target, profiles=set())
    assert printed_fingerprint(done) == cert_fingerprint(target)
    conf = render_for_loopback(
        (target / "health-nginx.conf").read_text(), free_port(), 9, target / "nginx-keys"
    )
    (tmp_path / "nginx.conf").write_text(conf)
    checked = subprocess.run(
        [str(nginx_bin), "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log")]
        + ["-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stderr

    # The dead-man switch section: the secret in .env, install.sh again.
    secret_line = guide_block("### Turn it on").splitlines()
    assert any(line.startswith("VAST_AGENT_SECRET=") for line in secret_line)
    with (target / ".env").open("a") as env:
        env.write(f"VAST_AGENT_SECRET={AGENT_SECRET}\n")
    on = install(target, instance_env=VM_ENVIRONMENT)
    assert on.returncode == 0, on.stderr
    assert unit_exec_start(target) == "/usr/bin/docker compose --profile agent up -d"
    assert_stack_complete(target, profiles={"agent"})
    assert printed_fingerprint(on) == printed_fingerprint(done)


def test_what_vastpanel_needs_lists_every_setting():
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## 4. What vastpanel needs") :]
    section = section[: section.index("\n## ", 5)]
    for name in (
        "VAST_HEALTH_PORT",
        "VAST_LLM_UPSTREAM_KEY",
        "LLM_API_KEYS",
        "VAST_AGENT_SECRET",
        "VAST_INSTANCE_TLS_FINGERPRINT",
        "VAST_METRICS_TOKEN",
    ):
        assert name in section, name
