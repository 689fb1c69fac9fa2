"""Log lines: one line per action on stderr, UTC timestamps, and never a secret.

The panel logs every audit entry as `event=... actor=...` through the "vastpanel" logger.
`install_redaction` makes every record in the process pass through `redact`; `configure_logging`
decides where the lines go unless the host (gunicorn's logconfig) already did;
gunicorn.conf.py uses the same format for gunicorn's own lines.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import TextIO

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# The query string of a request line, as werkzeug's dev server logs it: "GET /path?q=1 HTTP/1.1".
REQUEST_LINE_QUERY = re.compile(r"([A-Z]+ /[^\s?\"]*)\?[^\s\"]*")

_secrets: set[str] = set()
_installed = False


def redact(text: str) -> str:
    """Replace every known secret in text with ***."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def install_redaction(secrets: Iterable[str]) -> None:
    """Make every log record in this process pass through redact(), once."""
    global _installed
    _secrets.update(s for s in secrets if s)
    if _installed:
        return
    _installed = True
    make_record = logging.getLogRecordFactory()

    def redacting_factory(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        if _secrets:
            message = record.getMessage()
            cleaned = redact(message)
            if cleaned != message:
                record.msg, record.args = cleaned, None
        return record

    logging.setLogRecordFactory(redacting_factory)


class UtcFormatter(logging.Formatter):
    """Format times as 2024-05-01T12:00:00.123Z, whatever the host's time zone."""

    converter = time.gmtime

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        """Return the record's time in ISO 8601 UTC with milliseconds."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


class StripQueryString(logging.Filter):
    """Drop query strings from request lines: URLs end up in logs, and queries may hold data."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = REQUEST_LINE_QUERY.sub(r"\1", message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def configure_logging(stream: TextIO | None = None) -> None:
    """Send the panel's lines to stderr, unless the host (gunicorn's logconfig) already did.

    Also keeps query strings out of the Flask dev server's request lines.
    """
    panel_log = logging.getLogger("vastpanel")
    if panel_log.level == logging.NOTSET:
        panel_log.setLevel(logging.INFO)  # action lines are INFO; the root's default drops them
    werkzeug_log = logging.getLogger("werkzeug")
    if not any(isinstance(f, StripQueryString) for f in werkzeug_log.filters):
        werkzeug_log.addFilter(StripQueryString())
    if panel_log.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(UtcFormatter(LOG_FORMAT))
    panel_log.addHandler(handler)
    panel_log.propagate = False
