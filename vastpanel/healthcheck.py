"""The container's HEALTHCHECK: `python -m vastpanel.healthcheck` exits 0 when /healthz says 200.

It asks this container's own server, on the port of VASTPANEL_BIND (host:port, as
gunicorn.conf.py reads it), over loopback. Standard library only: the image has no curl.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 4.0


def healthz_url(bind: str) -> str:
    """Return the loopback /healthz URL for a gunicorn bind such as 0.0.0.0:8000."""
    port = bind.strip().rsplit(":", 1)[-1] if ":" in bind else "8000"
    return f"http://127.0.0.1:{port}/healthz"


def main() -> int:
    """Ask /healthz once; print why on failure; return the exit status."""
    url = healthz_url(os.environ.get("VASTPANEL_BIND", "") or "127.0.0.1:8000")
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
        exc.close()
    except OSError as exc:  # refused, timed out, unreachable
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
