"""Reading what a request sends: JSON bodies, their fields and whole numbers in queries.

A value that cannot be used raises InvalidInput, which the API answers 422 and the page 400,
with the field named.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from typing import Any

from flask import request

WHOLE_NUMBER = re.compile(r"-?[0-9]+")
MAX_DIGITS = 18  # a whole number this long fits SQLite's integers


class InvalidInput(Exception):
    """A request field is unusable; answered with the field named."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


def json_body() -> dict[str, Any]:
    """Return the request's JSON object; an empty body counts as {}."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("body: malformed JSON") from None
    except RecursionError:  # e.g. 100,000 nested "[": no request field is nested at all
        raise InvalidInput("body: JSON nested too deeply") from None
    if not isinstance(body, dict):
        raise InvalidInput("body: must be a JSON object")
    return body


def field(body: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    """Return body[name] if it has exactly the given JSON type; absent or null gives default."""
    value = body.get(name)
    if value is None:
        return default
    # bool is a subclass of int in Python, but true is not a port number.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = {bool: "a boolean", str: "a string", int: "an integer"}
        raise InvalidInput(f"{name} must be {names[kind]}")
    return value


def query_int(name: str, default: int | None, low: int, high: int | None) -> int | None:
    """Read a whole-number query parameter within bounds."""
    raw = request.args.get(name)
    if raw is None:
        return default
    return whole_number(raw, name, low, high)


def whole_number(raw: str, name: str, low: int, high: int | None) -> int:
    """Parse a whole number within bounds, or InvalidInput saying which of the two it is not."""
    raw = raw.strip()
    if not WHOLE_NUMBER.fullmatch(raw):
        raise InvalidInput(f"{name} must be a whole number")
    bounds = f"from {low} to {high}" if high is not None else f"{low} or more"
    out_of_range = InvalidInput(f"{name} must be {bounds}: the number given is out of range")
    if len(raw.lstrip("-").lstrip("0")) > MAX_DIGITS:  # no huge number is read at all
        raise out_of_range
    value = int(raw)
    if value < low or (high is not None and value > high):
        raise out_of_range
    return value


def timestamp(raw: str, name: str) -> float:
    """Parse an ISO 8601 time with its zone (2024-05-01T18:00:00Z, ...+02:00) to epoch seconds."""
    try:
        moment = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise InvalidInput(f"{name} must be an ISO 8601 time, e.g. 2024-05-01T18:00:00Z") from None
    if moment.tzinfo is None:
        raise InvalidInput(f"{name} must say its time zone (Z for UTC, or +02:00)")
    return moment.timestamp()


def decimal_number(raw: str, name: str, low: float, high: float) -> float:
    """Parse a number such as 5 or 2.5 within bounds (low excluded), or InvalidInput."""
    try:
        value = float(raw.strip())
    except ValueError:
        raise InvalidInput(f"{name} must be a number") from None
    if not math.isfinite(value) or not low < value <= high:
        raise InvalidInput(f"{name} must be more than {low:g} and at most {high:g}")
    return value
