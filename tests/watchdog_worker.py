"""One app process for the multi-process watchdog test, as a gunicorn worker would build it.

Usage: python tests/watchdog_worker.py READY_DIR MAX_SECONDS (configured by the environment).
It calls create_app() (so the watchdog starts by default), writes READY_DIR/ready-<pid>, and
runs until SIGTERM or MAX_SECONDS; then it shuts the watchdog down and prints one JSON line:
its pid, and how many of its looks led and how many followed.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

from vastpanel import create_app
from vastpanel.watchdog.looks import EXTENSION, Watchdog

looks = {"leader": 0, "follower": 0}
_look = Watchdog.look


def counted_look(self: Watchdog):
    """Run a look and count whether it led."""
    result = _look(self)
    looks["leader" if result.leader else "follower"] += 1
    return result


def main() -> int:
    """Serve the watchdog until told to stop, then report."""
    ready_dir, max_seconds = Path(sys.argv[1]), float(sys.argv[2])
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    Watchdog.look = counted_look  # before create_app, which looks at once
    app = create_app()
    watchdog = app.extensions[EXTENSION]
    (ready_dir / f"ready-{os.getpid()}").write_text(app.extensions["vastpanel"].leases.holder)
    done.wait(max_seconds)
    watchdog.shutdown()
    app.extensions["vastpanel"].store.close()
    print(json.dumps({"pid": os.getpid(), **looks}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
