"""Write the settings table of docs/configuration.md from SETTINGS in vastpanel/config/settings.py.

    .venv/bin/python scripts/configuration_table.py           # rewrite the table in place
    .venv/bin/python scripts/configuration_table.py --check   # exit 1 when it is out of date

Each setting is described once, where Config.from_env reads it; this copies that description
into the reference, and tests/test_config_reference.py fails when the two differ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vastpanel.config import with_settings_table

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def main(argv: list[str] | None = None) -> int:
    """Rewrite the table, or with --check only tell whether it is up to date."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    args = parser.parse_args(argv)
    current = REFERENCE.read_text(encoding="utf-8")
    wanted = with_settings_table(current)
    if args.check:
        if wanted != current:
            print(f"{REFERENCE} is out of date: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    if wanted != current:
        REFERENCE.write_text(wanted, encoding="utf-8")
        print(f"wrote {REFERENCE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
