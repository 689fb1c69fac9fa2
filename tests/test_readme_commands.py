"""The README's two quick-start commands: a local virtualenv each, and CI runs the same one."""

from __future__ import annotations

from test_fresh_clone import readme_commands

from support import ROOT


def test_ci_runs_the_readme_test_command_as_written():
    run_command, test_command = readme_commands((ROOT / "README.md").read_text())
    assert run_command == (
        "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/python -m vastpanel.demo"
    )
    assert test_command == (
        "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest"
    )
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == test_command
    assert "pip install" not in "\n".join(ci[:-1])  # nothing installed system-wide before it
