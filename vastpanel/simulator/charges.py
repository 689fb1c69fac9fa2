"""vast.ai's ``GET /api/v0/charges/``: one row per contract, filtered by day, paged by token.

The shape, the filters and the errors follow vast-ai/docs
``api-reference/openapi/yaml/show_charges.yaml`` field by field: ``select_filters`` must hold a
``day`` range (``gte``/``lte``, epoch seconds) and may hold ``type: {"in": [...]}``; ``limit``
(default 100, server maximum 500), ``after_token`` (the previous page's ``next_token``) and
``latest_first`` (default true) page and order the rows. A row is a contract (billing.py). What
vast.ai does with a ``limit`` above 500 or below 1 is not documented: above is served as 500,
below (or not a number) answers 400 invalid_args.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping

MAX_LIMIT = 500
DEFAULT_LIMIT = 100
MISSING_RANGE = {
    "success": False,
    "msg": "Must provide both 'day' gte and lte filters for instance charges",
}
INVALID_TOKEN = {"success": False, "error": "invalid_token", "msg": "Invalid pagination token"}
NO_BILLING_READ = {
    "success": False,
    "error": "permission_denied",
    "msg": "This API key lacks the billing_read permission.",
}


def charges_answer(backend, args: Mapping[str, str]) -> tuple[int, dict]:
    """Return the status and body vast.ai answers the charges request with these arguments."""
    if not backend.billing_read:
        return 403, NO_BILLING_READ
    filters = _json(args.get("select_filters"))
    day = filters.get("day") if isinstance(filters, dict) else None
    if not isinstance(day, dict) or not all(_number(day.get(k)) for k in ("gte", "lte")):
        return 400, MISSING_RANGE
    kinds = filters.get("type", {"in": ["instance"]})
    if not isinstance(kinds, dict) or not isinstance(kinds.get("in"), list):
        return 400, _invalid('type must be {"in": ["instance", "volume", "serverless"]}')
    try:
        limit = min(int(args.get("limit", DEFAULT_LIMIT)), MAX_LIMIT)
    except ValueError:
        limit = 0
    if limit < 1:
        return 400, _invalid(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    offset = _offset(args.get("after_token"))
    if offset is None:
        return 400, INVALID_TOKEN
    latest_first = str(args.get("latest_first", "true")).lower() not in ("false", "0", "no")
    rows = backend.charge_rows(float(day["gte"]), float(day["lte"]))
    rows = [r for r in rows if r["type"] in kinds["in"]]
    rows.sort(key=lambda r: (r["start"], r["source"]), reverse=latest_first)
    page = rows[offset : offset + limit]
    more = offset + limit < len(rows)
    return 200, {
        "success": True,
        "count": len(page),
        "total": len(rows),
        "next_token": _token(offset + limit) if more else None,
        "results": page,
    }


def _json(text: str | None) -> object:
    try:
        return json.loads(text or "null")
    except ValueError:
        return None


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _invalid(msg: str) -> dict:
    return {"success": False, "error": "invalid_args", "msg": msg}


def _token(offset: int) -> str:
    """Return an opaque page token, base64 JSON as vast.ai's example token is."""
    return base64.b64encode(json.dumps({"values": {"offset": offset}}).encode()).decode()


def _offset(token: str | None) -> int | None:
    """Return the offset a token names (0 without one), or None for a token not ours."""
    if not token:
        return 0
    try:
        offset = json.loads(base64.b64decode(token, validate=True))["values"]["offset"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None
    return offset if isinstance(offset, int) and offset >= 0 else None
