"""Logging that never shows a secret."""

from __future__ import annotations

import logging
from collections.abc import Iterable

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
