"""Every setting is described once (SETTINGS in vastpanel/config/settings.py), and what the code reads,
docs/configuration.md, the README's short list, .env.example and compose.yaml agree with it."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import fields
from pathlib import Path

import gunicorn.config
import yaml

from vastpanel.config import SERVING_SETTINGS, SETTINGS, Config, with_settings_table

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "configuration.md"
DOCUMENTED = {s.env for s in SETTINGS + SERVING_SETTINGS}


class RecordingEnv(Mapping[str, str]):
    """An environment that notes every variable asked for, however it is asked."""

    def __init__(self, values: dict[str, str] | None = None):
        self.values = values or {}
        self.asked: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.asked.add(name)
        return self.values[name]

    def get(self, name, default=None):
        self.asked.add(name)
        return self.values.get(name, default)

    def __contains__(self, name) -> bool:
        self.asked.add(name)
        return name in self.values

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("from_env must ask for variables by name, not list them")

    def __len__(self) -> int:
        return len(self.values)


def test_the_reference_table_is_the_one_written_from_the_code():
    document = REFERENCE.read_text()
    assert with_settings_table(document) == document, (
        "docs/configuration.md differs from SETTINGS: run scripts/configuration_table.py"
    )


def test_the_script_that_writes_the_table_finds_it_up_to_date():
    checked = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "configuration_table.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr


def test_from_env_reads_exactly_the_variables_the_table_describes():
    env = RecordingEnv()
    Config.from_env(env)
    assert env.asked == {s.env for s in SETTINGS}


def test_each_config_field_is_set_by_one_setting():
    set_by_settings = [s.field for s in SETTINGS]
    assert len(set_by_settings) == len(set(set_by_settings))
    not_from_the_environment = {"testing", "warnings"}
    assert set(set_by_settings) == {f.name for f in fields(Config)} - not_from_the_environment


def test_the_defaults_of_config_are_those_of_an_empty_environment():
    assert Config.from_env({}) == Config()


def test_the_defaults_shown_are_the_defaults_used():
    config = Config.from_env({})
    for setting in SETTINGS:
        shown = setting.default_text.strip("`")
        if re.fullmatch(r"\d+(\.\d+)?", shown):
            assert getattr(config, setting.field) == float(shown), setting.env


def test_the_serving_settings_are_read_where_the_reference_says():
    conf = (ROOT / "gunicorn.conf.py").read_text()
    for setting in SERVING_SETTINGS:
        if setting.env == "FORWARDED_ALLOW_IPS":  # gunicorn's own setting
            assert f'"{setting.env}"' in inspect.getsource(gunicorn.config), setting.env
        else:
            assert f'"{setting.env}"' in conf, setting.env


def test_the_readme_lists_ten_settings_that_all_exist():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The ten settings", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `([A-Z_]+)` \|", section, re.M)
    assert len(listed) == len(set(listed)) == 10, listed
    assert set(listed) <= DOCUMENTED, set(listed) - DOCUMENTED


def test_every_variable_in_env_example_and_compose_is_described():
    example = (ROOT / ".env.example").read_text()
    in_example = set(re.findall(r"^#? ?([A-Z][A-Z_]+)=", example, re.M))
    assert {"VAST_API_KEY", "VAST_INSTANCE_ID", "CONTROL_API_KEY"} <= in_example
    assert in_example <= DOCUMENTED, in_example - DOCUMENTED
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["vastpanel"]
    assert set(compose["environment"]) <= DOCUMENTED, set(compose["environment"]) - DOCUMENTED
    assert compose["env_file"] == ".env"  # every line of .env reaches the panel


def test_every_setting_named_in_the_docs_exists():
    named: set[str] = set()
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        named |= set(re.findall(r"`((?:VAST|VASTPANEL|LLM|CONTROL)_[A-Z_]+)`", path.read_text()))
    assert named <= DOCUMENTED, named - DOCUMENTED
