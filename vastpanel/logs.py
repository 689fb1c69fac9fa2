"""Log lines: one line per action on stderr, UTC timestamps, and never a secret.

The panel logs every audit entry as `event=... actor=...` through the "vastpanel" logger.
`install_redaction` makes every record in the process pass through `redact`; `configure_logging`
decides where the lines go unless the host (gunicorn's logconfig) already did;
gunicorn.conf.py uses the same format for gunicorn's own lines.

A message is one line whatever a request put in it: UtcFormatter writes control characters
(CR, LF, ...) of a message as escapes such as \\n, so a path, a user agent or an audit detail
cannot start a line of its own that passes for another record. A traceback after the message
keeps its lines.
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

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: what a reader of the
# log may take as the end of a line, or what a terminal acts on.
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

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


def escape_controls(text: str) -> str:
    """Write each control character of text as an escape (\\n, \\x1b, \\u2028), on one line."""
    return CONTROL_CHARACTERS.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in NAMED_ESCAPES:
        return NAMED_ESCAPES[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


class UtcFormatter(logging.Formatter):
    """Format times as 2024-05-01T12:00:00.123Z, whatever the host's time zone, and each
    message on one line."""

    converter = time.gmtime

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802
        """Return the line of the record, its message's control characters escaped."""
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        """Return the record's time in ISO 8601 UTC with milliseconds."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


class StripQueryString(logging.Filter):
    """Drop query strings from request lines: URLs end up in logs, and queries may hold data.

    The dev server's lines also get their control characters escaped here, whatever handler
    writes them.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = escape_controls(REQUEST_LINE_QUERY.sub(r"\1", message))
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
