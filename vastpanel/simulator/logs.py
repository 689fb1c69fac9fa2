"""The simulator's request logs: what the API and the LLM stacks answered, never a key."""

from __future__ import annotations

import threading
from collections import deque

LOG_LIMIT = 10_000  # a demo left polling for days keeps only the latest requests


class RequestLog:
    """The API's log and the LLM stacks' log, safe to use from server threads."""

    def __init__(self):
        self._api: deque[dict] = deque(maxlen=LOG_LIMIT)
        self._llm: deque[dict] = deque(maxlen=LOG_LIMIT)
        self._lock = threading.Lock()

    def record(self, entry: dict, llm: bool = False) -> None:
        """Append one answered request to the API log or the LLM log."""
        with self._lock:
            (self._llm if llm else self._api).append(entry)

    def requests(self, method: str | None = None, path: str | None = None, llm=False) -> list:
        """Return logged requests, optionally only those with ``method`` and/or ``path``."""
        with self._lock:
            rows = list(self._llm if llm else self._api)
        return [
            dict(r)
            for r in rows
            if (method is None or r["method"] == method.upper())
            and (path is None or r["path"] == path)
        ]

    def clear(self) -> None:
        """Empty both logs."""
        with self._lock:
            self._api.clear()
            self._llm.clear()
