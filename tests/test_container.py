"""The container files: no Docker engine here, so they are read and checked against each other.

The image must start with the production command of docs/operations.md, run as a non-root user,
keep the database in a volume and check its health with Python (the slim image has no curl).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from support import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """Return the Dockerfile's (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def last(name: str) -> str:
    values = [rest for word, rest in instructions() if word == name]
    assert values, f"no {name} in the Dockerfile"
    return values[-1]


def dockerfile_env() -> dict[str, str]:
    env = {}
    for word, rest in instructions():
        if word == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(rest))
    return env


def documented_production_command() -> list[str]:
    """Return the command in the first sh block of docs/operations.md's Production section."""
    section = (ROOT / "docs" / "operations.md").read_text().split("## Production", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "no sh block in the Production section of docs/operations.md"
    return shlex.split(block.group(1).strip())


def test_image_starts_with_the_documented_production_command():
    command = documented_production_command()
    # The docs run gunicorn from the checkout's .venv; the image has it on PATH.
    assert Path(command[0]).name == "gunicorn" and "gunicorn.conf.py" in command
    assert json.loads(last("CMD")) == ["gunicorn", *command[1:]]
    assert not [word for word, _ in instructions() if word == "ENTRYPOINT"]


def test_image_is_slim_non_root_with_a_data_volume():
    base = last("FROM")
    assert re.fullmatch(r"python:3\.1[1-9][\w.-]*-slim[\w.-]*", base), base
    user = last("USER")
    assert user not in ("root", "0", "")
    env = dockerfile_env()
    volumes = json.loads(last("VOLUME"))
    assert Path(env["VAST_DB_PATH"]).parent.as_posix() in volumes
    assert env["VASTPANEL_BIND"] == "0.0.0.0:8000"
    assert last("EXPOSE") == env["VASTPANEL_BIND"].rsplit(":", 1)[1]


def test_healthcheck_uses_python_on_healthz():
    healthcheck = last("HEALTHCHECK")
    assert "curl" not in healthcheck and "wget" not in healthcheck
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert command == ["python", "-m", "vastpanel.healthcheck"]
    source = (ROOT / "vastpanel" / "healthcheck.py").read_text()
    assert "/healthz" in source and "VASTPANEL_BIND" in source


def test_dockerignore_keeps_what_the_image_runs():
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", "data", ".env", "tests"} <= ignored
    for needed in ("vastpanel", "app.py", "gunicorn.conf.py", "pyproject.toml", "README.md"):
        assert needed not in ignored and (ROOT / needed).exists()


@pytest.fixture(scope="module")
def compose_service() -> dict:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return compose["services"]["vastpanel"]


def config_variables() -> set[str]:
    """Every variable the config package reads."""
    source = (ROOT / "vastpanel" / "config" / "settings.py").read_text()
    return set(re.findall(r'"((?:VAST|VASTPANEL|CONTROL)_[A-Z_]+)"', source))


def test_compose_example(compose_service):
    assert compose_service["build"] == "."
    volume = compose_service["volumes"][0]
    assert volume.split(":")[1] == json.loads(last("VOLUME"))[0]
    assert all(port.startswith("127.0.0.1:") for port in compose_service["ports"])
    env = compose_service["environment"]
    known = config_variables() | {
        "VASTPANEL_BIND",
        "VASTPANEL_WORKERS",
        "VASTPANEL_CONNECTIONS",
        "SESSION_COOKIE_SECURE",
        "FORWARDED_ALLOW_IPS",
    }
    assert set(env) <= known, set(env) - known
    for secret in ("VAST_API_KEY", "CONTROL_API_KEY"):
        assert env[secret].startswith("${" + secret + ":?"), "secrets come from .env"
    reference = (ROOT / "docs" / "configuration.md").read_text()
    for name in env:
        assert f"`{name}`" in reference, f"{name} is not in docs/configuration.md"


def test_the_container_cookie_is_secure_by_default(compose_service):
    # Behind a TLS proxy that is not on loopback gunicorn does not trust X-Forwarded-Proto
    # (FORWARDED_ALLOW_IPS): without this the cookie would lose Secure.
    assert dockerfile_env()["SESSION_COOKIE_SECURE"] == "true"
    assert (
        compose_service["environment"]["SESSION_COOKIE_SECURE"] == "${SESSION_COOKIE_SECURE:-true}"
    )
    operations = (ROOT / "docs" / "operations.md").read_text()
    assert "`FORWARDED_ALLOW_IPS`" in operations


def test_the_data_folder_is_private_in_the_image():
    run = " ".join(rest for word, rest in instructions() if word == "RUN")
    assert "chmod 0700 /app/data" in run
