"""The OpenAPI 3.1 description of /infra/vast, served at /infra/vast/openapi.json.

The description is served without X-API-Key: it holds no secret and no state, and a client
needs it before it has a key. It lives in its own blueprint, so the API blueprint's
before_request (which demands the key) does not run for it. tests/test_openapi.py checks real
answers of every endpoint, errors included, against it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from flask import Blueprint, jsonify

from ..events import ACTORS, EVENTS
from .answers import MOVE_STEPS

bp = Blueprint("openapi", __name__)

PREFIX = "/infra/vast"
TIMESTAMP = {
    "type": "string",
    "format": "date-time",
    "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$",
    "description": "UTC, to the second, e.g. 2024-05-01T12:00:00Z.",
}
NULLABLE_STRING = {"type": ["string", "null"]}
STATUS_WORD = {
    "type": "string",
    "description": (
        "The panel's status word: running, stopped, stopping, scheduling, creating, loading, "
        "exited, frozen, rebooting, restarting, unknown, offline, not_found, unconfigured; a "
        "status vast.ai "
        "adds later is passed through as it is."
    ),
}


def _package_version() -> str:
    try:
        return version("vastpanel")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    """Describe a JSON object with exactly these properties, all required unless listed."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


def _ref_schema(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json({"$ref": "#/components/schemas/Error"}, description)


UNAUTHORIZED = _error("X-API-Key is missing or wrong.")
GATEWAY_ONLY = _error(
    "The key is one of GATEWAY_API_KEYS, which may only post /infra/vast/activity."
)
LOCKED_OUT = {
    **_error(
        "Too many wrong keys from this client (its address; an IPv6 /64): no key is checked "
        "from it, the right one included, until the lockout passes. Each lockout lasts twice "
        "as long as the one before."
    ),
    "headers": {
        "Retry-After": {
            "description": "Seconds until keys from this client are checked again.",
            "schema": {"type": "integer", "minimum": 1},
        }
    },
}
TOO_LARGE = _error(
    "The request body is over the limit (64 KiB): announced so, it was not read; sent in "
    "chunks, it was read up to the limit."
)
DISABLED = _error("The API is disabled: CONTROL_API_KEY is not configured on the server.")
INTERNAL = _error("Unexpected internal error; the details are only in the server log.")
NOT_CONFIGURED = _error(
    "VAST_API_KEY or VAST_INSTANCE_ID is not configured on the server, or an unexpected "
    "internal error (details only in the server log)."
)
UPSTREAM = _error(
    "vast.ai failed, refused (for example no credit, or a rejected VAST_API_KEY), or does not "
    "know the instance. The detail says which."
)
BUSY = _error("Another power action is still running; try again shortly.")
INVALID = _error("A request field or the body is unusable; the detail names it.")
IGNORED_BODY = {
    "required": False,
    "description": "Ignored; when present it must be a JSON object. An empty body counts as {}.",
    "content": {"application/json": {"schema": {"type": "object"}}},
}

USD = {"type": "number", "minimum": 0}
ALL_IN = {
    "gpu_cost_usd": {
        **USD,
        "description": "GPU time at dph_base while running or frozen, as booked by vastpanel.",
    },
    "storage_cost_usd": {
        **USD,
        "description": "Storage at storage_total_cost for every second the instance exists.",
    },
    "bandwidth_cost_usd": {
        "type": ["number", "null"],
        "minimum": 0,
        "description": "Bandwidth as vast.ai's charges billed it; null until they are read.",
    },
    "all_in_cost_usd": {**USD, "description": "GPU + storage + bandwidth."},
}
BUDGET = {
    "anyOf": [
        _object(
            {
                "limit_usd": {"type": "number", "exclusiveMinimum": 0},
                "period": {"enum": ["day", "month"]},
                "spent_usd": {
                    **USD,
                    "description": (
                        "The estimate of the period; a contract billed wholly within it counts "
                        "as the larger of its bill and the estimate over its window, never both."
                    ),
                },
                "share": {"type": "number", "minimum": 0, "description": "1.0 = all spent."},
                "state": {"enum": ["ok", "warning", "exceeded", "overridden"]},
                "period_ends_at": TIMESTAMP,
                "override_until": {
                    "anyOf": [TIMESTAMP, {"type": "null"}],
                    "description": (
                        "When the admin's override in force ends (at most the period's end); "
                        "null when none is in force (its time passed or its amount is spent)."
                    ),
                },
                "override_limit_usd": {
                    "type": ["number", "null"],
                    "minimum": 0,
                    "description": (
                        "What the period may cost under the override in force, when it was "
                        "given as an amount; null for an override until a time, or none."
                    ),
                },
            }
        ),
        {"type": "null", "description": "No budget is set (VAST_BUDGET_USD)."},
    ]
}


BILLED_WINDOW = {
    "start": {**TIMESTAMP, "description": "Where the window vast.ai billed begins."},
    "end": {**TIMESTAMP, "description": "Where it ends."},
    "billed_usd": {"type": "number", "description": "vast.ai's amount for the window."},
    "estimate_usd": {
        "type": ["number", "null"],
        "minimum": 0,
        "description": (
            "vastpanel's estimate over exactly this window (GPU for gpu, storage for disk; for "
            "a contract GPU and storage plus its bandwidth and SLA items as billed); null when "
            "not comparable or not estimated (bandwidth, SLA)."
        ),
    },
    "comparable": {
        "type": "boolean",
        "description": "False when the window begins before vastpanel's own records.",
    },
    "difference_pct": {
        "type": ["number", "null"],
        "description": "(estimate - billed) / billed x 100; null when not comparable.",
    },
}


MOVE_ACTIVE = [state for state in MOVE_STEPS if state not in ("done", "failed")]
INSTANCE_ID = {"type": "integer", "minimum": 1}
MACHINE_ID = {"type": ["integer", "null"], "description": "vast.ai's machine id, if known."}
PRICE = {"type": "number", "minimum": 0, "description": "$/hour while running (dph_total)."}
FRACTION = {"type": "number", "minimum": 0, "maximum": 1}
TEXT_LIST = {"type": "array", "items": {"type": "string"}}
COUNTRIES = {
    "type": "array",
    "items": {"type": "string", "pattern": "^[A-Za-z]{2}$"},
    "description": "Two-letter country codes (the offer's location ends with one); [] = anywhere.",
}
COPY_PATHS = {
    "type": "array",
    "items": {"type": "string", "pattern": "^/", "not": {"pattern": "^(/+|/root/*)$"}},
    "description": (
        "Absolute paths copied from the old disk to the new one before the switch (never / "
        "or /root); [] = nothing comes along."
    ),
}
ENV_PAIRS = {
    "type": "array",
    "items": {
        "type": "array",
        # A [name, value] pair: the name is never empty. Said in words, not with prefixItems,
        # which schemathesis's OpenAPI 3.1 reader turns into an invalid tuple "items".
        "items": {"type": "string"},
        "minItems": 2,
        "maxItems": 2,
        "description": "A [name, value] pair; the name is never empty.",
    },
}
RUNTYPES = ["ssh", "jupyter", "args", "ssh_proxy", "ssh_direct", "jupyter_proxy", "jupyter_direct"]
SECRET_NOTE = (
    "Values of variables whose names look secret (TOKEN, SECRET, PASSWORD, API_KEY, ...) are "
    "shown as ***, and so is any of them written elsewhere in the recipe."
)
RECIPE_FIELDS: dict[str, Any] = {
    "image": {"type": "string", "description": "The Docker image (vast.ai's image_uuid)."},
    "template_hash_id": NULLABLE_STRING,
    "args": {"type": ["array", "null"], "items": {"type": "string"}},
    "runtype": {"enum": [*RUNTYPES, None]},
    "env": {
        **ENV_PAIRS,
        "description": "[name, value] pairs, port entries included. " + SECRET_NOTE,
    },
    "onstart": NULLABLE_STRING,
    "disk_gb": {"type": "number", "minimum": 8, "maximum": 100000},
    "label": NULLABLE_STRING,
    "image_login": {
        "enum": ["***", None],
        "description": "The registry login (never shown): *** when one is stored.",
    },
    "private_image": {
        "type": "boolean",
        "description": "The image's registry needs a login (vast.ai does not return it).",
    },
    "gpu_name": {"type": "string"},
    "num_gpus": {"type": "integer", "minimum": 1, "maximum": 16},
    "min_gpu_ram_mb": {"type": "number", "minimum": 0},
    "max_dph": {**PRICE, "description": "The most an offer may cost, $/hour (dph_total)."},
    "min_reliability": FRACTION,
    "verified_only": {"type": "boolean"},
    "regions": COUNTRIES,
    "copy_paths": COPY_PATHS,
}
# What PUT /recipe accepts for each field (domain/recipe.py checks the same).
RECIPE_CHANGES: dict[str, Any] = {
    **RECIPE_FIELDS,
    "image": {"type": "string", "pattern": r"\S", "maxLength": 1024},
    "gpu_name": {"type": "string", "pattern": r"\S", "maxLength": 1024},
    "template_hash_id": {"type": ["string", "null"], "maxLength": 4096},
    "onstart": {"type": ["string", "null"], "maxLength": 4096},
    "label": {"type": ["string", "null"], "maxLength": 4096},
    "args": {"type": ["array", "null"], "items": {"type": "string", "pattern": r"\S"}},
    "env": {
        "anyOf": [ENV_PAIRS, {"type": "object", "additionalProperties": {"type": "string"}}],
        "description": "[name, value] pairs or an object; a value sent as *** keeps the stored one.",
    },
    "image_login": {
        "type": ["string", "null"],
        "maxLength": 1024,
        "description": '"-u user -p token registry"; *** keeps the stored one, null removes it.',
    },
    "min_gpu_ram_mb": {"type": "number", "minimum": 0, "maximum": 1000000},
    "max_dph": {"type": "number", "minimum": 0, "maximum": 1000000},
}


# --- the schedule of warm hours ----------------------------------------------------------------

SCHEDULE_TEXT = {
    "type": "string",
    "maxLength": 1000,
    "description": (
        "Weekly windows in the time zone, e.g. 'Mon-Fri 08:30-18:30; Sat 10:00-14:00': rules "
        "separated by ';', each days (Mon..Sun, ranges, lists) and time ranges (HH:MM-HH:MM, "
        "24:00 as a closing time, overnight when the closing time is not after the opening). "
        "'' is a schedule without windows."
    ),
}
ZONE = {"type": "string", "description": "An IANA time zone, e.g. Europe/Berlin."}
SKIP = {
    "type": "array",
    "maxItems": 400,
    "items": {
        "type": "string",
        "description": "YYYY-MM-DD, or an inclusive range YYYY-MM-DD..YYYY-MM-DD.",
    },
    "description": "Dates without windows (a window belongs to the date it opens on).",
}
SCHEDULE_FIELDS = {"schedule": SCHEDULE_TEXT, "timezone": ZONE, "skip": SKIP}
WINDOW = {
    "anyOf": [
        _object(
            {"opens_at": TIMESTAMP, "closes_at": TIMESTAMP},
        ),
        {"type": "null"},
    ]
}
HOURS = {"type": "number", "minimum": 0}
SCHEDULE_SCHEMAS: dict[str, Any] = {
    "Schedule": _object(
        {
            "source": {
                "enum": ["stored", "environment", "none"],
                "description": (
                    "Where the schedule in force comes from: set by PUT or on the page "
                    "(stored, wins until DELETE), VAST_SCHEDULE (environment), or none."
                ),
            },
            **SCHEDULE_FIELDS,
            "set_at": {"anyOf": [TIMESTAMP, {"type": "null"}], "description": "When stored."},
            "set_by": {"enum": ["api", "admin", "cli", None], "description": "Who stored it."},
            "environment": _object(
                SCHEDULE_FIELDS,
            )
            | {"description": "What the environment says (in force again after DELETE)."},
            "window": WINDOW | {"description": "The window open now, or null."},
            "next_window": WINDOW | {"description": "The next window to open, or null."},
            "next_start_at": {
                "anyOf": [TIMESTAMP, {"type": "null"}],
                "description": (
                    "When the start for the next window not yet started goes out (the lead "
                    "time before it opens; in the past: at the watchdog's next look); null "
                    "without windows."
                ),
            },
            "lead_minutes": {
                **HOURS,
                "description": (
                    "How early a window's start goes out: the 90th percentile of the last timed "
                    "starts (start call to first healthy answer) plus 2 minutes; 15 until five "
                    "starts are timed."
                ),
            },
            "lead_learned": {"type": "boolean"},
            "timed_starts": {"type": "integer", "minimum": 0, "maximum": 20},
            "idle_minutes_in_windows": {
                "type": ["number", "null"],
                "exclusiveMinimum": 0,
                "description": "VAST_SCHEDULE_IDLE_MINUTES; null: no idle stop inside windows.",
            },
            "hard_end": {
                "type": "boolean",
                "description": (
                    "VAST_SCHEDULE_HARD_END: an idle instance stops at a window's end (never "
                    "while requests run), not after the idle time."
                ),
            },
            "month_cost": {
                "anyOf": [
                    _object(
                        {
                            "window_hours": HOURS,
                            "lead_hours": HOURS,
                            "idle_after_hours": {
                                **HOURS,
                                "description": "Idle time after each window before the stop.",
                            },
                            "gpu_dph": USD,
                            "storage_dph": USD,
                            "gpu_usd": USD,
                            "storage_usd": {**USD, "description": "Storage for all 720 hours."},
                            "total_usd": USD,
                        }
                    ),
                    {
                        "type": "null",
                        "description": "No windows, or vast.ai has not given a price yet.",
                    },
                ],
                "description": "The next 30 days of windows at the price vast.ai last gave.",
            },
            "last_30_days_cost_usd": {
                **USD,
                "description": (
                    "What the last 30 UTC days cost: the estimate, and for a contract billed "
                    "wholly within them the larger of its bill and the estimate over its window."
                ),
            },
            "blocked_by": {
                **NULLABLE_STRING,
                "description": "Why a scheduled start is refused now (a spent budget), or null.",
            },
            "note": {
                **NULLABLE_STRING,
                "description": "A cap that cuts the windows short (VAST_MAX_SESSION_HOURS), or null.",
            },
        }
    ),
    "ScheduleRequest": _object(
        {
            "schedule": SCHEDULE_TEXT,
            "timezone": {
                "type": ["string", "null"],
                "default": "UTC",
                "description": "An IANA time zone; absent or null: UTC.",
            },
            "skip": {
                **SKIP,
                "type": ["array", "null"],
                "description": "Dates without windows; absent or null: none.",
            },
        },
        required=["schedule"],
    ),
}

SCHEMAS: dict[str, Any] = {
    "Error": _object(
        {"detail": {"type": "string", "description": "What went wrong, safe to show."}}
    ),
    "Status": _object(
        {
            "instance_id": {"type": ["integer", "null"]},
            "status": STATUS_WORD,
            "gpu_name": NULLABLE_STRING,
            "dph_total": {"type": ["number", "null"], "description": "$/hour while running."},
            "endpoint_base_url": {
                **NULLABLE_STRING,
                "description": (
                    "https://ip:port (http:// with VAST_INSTANCE_PLAIN_HTTP) of the LLM stack "
                    "while running, else null."
                ),
            },
            "last_activity": {
                "anyOf": [TIMESTAMP, {"type": "null"}],
                "description": "The latest activity signal: a gateway post or /v1/ request, or the LLM seen busy.",
            },
            "last_activity_source": {
                "enum": ["gateway", "llm", None],
                "description": (
                    "Which signal last_activity is: a POST /activity (gateway) or the LLM's "
                    "metrics (llm: requests running or waiting, or finished since the last read)."
                ),
            },
            "llm_requests_running": {
                "type": ["number", "null"],
                "minimum": 0,
                "description": "vllm:num_requests_running at the last read; null unless read.",
            },
            "llm_requests_waiting": {
                "type": ["number", "null"],
                "minimum": 0,
                "description": "vllm:num_requests_waiting at the last read; null unless read.",
            },
            "llm_metrics": {
                "enum": ["ok", "unavailable", "no_metrics", "off", None],
                "description": (
                    "The LLM's metrics: read (ok), could not be read (unavailable: the other "
                    "sources decide), read but without a single vllm: metric (no_metrics: vLLM "
                    "started with --disable-log-stats; its load is unknown, not idle, and the "
                    "other sources decide), not a source (off, VAST_IDLE_SOURCES); null while "
                    "the instance is not running or they were not read in this session yet."
                ),
            },
            "llm_stalled": {
                "type": "boolean",
                "description": (
                    "True while vLLM reports requests running or waiting but none of its "
                    "counters has moved for VAST_LLM_STALL_MINUTES: its gauges are taken as "
                    "stuck (vLLM leaves them up after every request in flight was aborted), "
                    "and the LLM counts as idle since a counter last moved."
                ),
            },
            "auto_shutdown_in_minutes": {
                "type": ["number", "null"],
                "minimum": 0,
                "description": "Minutes before an idle stop; null when none applies.",
            },
            "total_runtime_hours": {"type": "number", "minimum": 0},
            "total_cost_usd": {
                "type": "number",
                "minimum": 0,
                "description": "Sum of session costs: minutes x dph_total (GPU + storage while on).",
            },
            **ALL_IN,
            "budget": BUDGET,
            "max_session_stop_at": {
                "anyOf": [TIMESTAMP, {"type": "null"}],
                "description": "When VAST_MAX_SESSION_HOURS stops the open session, or null.",
            },
            "contract_ends_at": {
                "anyOf": [TIMESTAMP, {"type": "null"}],
                "description": (
                    "When the instance's contract ends (vast.ai's end_date): after it the "
                    "instance cannot start again (power-on answers 409) and vast.ai may delete "
                    "it 48 h later; null when vast.ai gives none or cannot be read."
                ),
            },
            "scheduled_until": {
                "anyOf": [TIMESTAMP, {"type": "null"}],
                "description": (
                    "While a window of the schedule holds the idle stop off: when it closes "
                    "(the idle rule applies from then on); else null."
                ),
            },
            "agent": {
                "enum": ["ok", "unreachable", "off", None],
                "description": (
                    "The dead-man switch on the instance, as its last heartbeat in this session "
                    "went: ok (answered), unreachable (the last heartbeats did not get through), "
                    "off (VAST_AGENT_SECRET not set, or the agent is switched off); null while "
                    "no heartbeat was answered in this session (e.g. the instance is not running)."
                ),
            },
            "instance_transport": {
                "enum": ["tls_pinned", "plain_http", None],
                "description": (
                    "How the panel reaches the instance (health, metrics, heartbeats, /v1/): "
                    "tls_pinned (https://, only the certificate VAST_INSTANCE_TLS_FINGERPRINT "
                    "names), plain_http (http://, VAST_INSTANCE_PLAIN_HTTP=true: readable on "
                    "the way); null while vast.ai is not configured."
                ),
            },
            "message": NULLABLE_STRING,
            "moving": {
                "enum": [*MOVE_ACTIVE, None],
                "description": (
                    "The step of the move to another machine under way (GET /move), or null."
                ),
            },
            "stuck": {
                "anyOf": [
                    _ref_schema("Stuck"),
                    {"type": "null", "description": "No start waits for a taken GPU."},
                ]
            },
        }
    ),
    "PowerOnRequest": {
        "type": "object",
        "description": "Every field is optional; unknown fields are ignored.",
        "properties": {
            "wait_for_health": {
                "type": ["boolean", "null"],
                "default": True,
                "description": (
                    "Hold the request until the health URL answers 200, at most "
                    "VAST_WAIT_TIMEOUT_S seconds (then 504)."
                ),
            },
            "health_path": {
                "type": ["string", "null"],
                "pattern": r"^/(?!/)[^\s\\]*$",
                "maxLength": 512,
                "description": "Overrides VAST_HEALTH_PATH; a path, no scheme or host.",
            },
            "health_port": {
                "type": ["integer", "null"],
                "minimum": 1,
                "maximum": 65535,
                "description": "Overrides VAST_HEALTH_PORT (the container port).",
            },
        },
    },
    "PowerOnResult": _object(
        {
            "status": STATUS_WORD,
            "instance_id": {"type": ["integer", "null"]},
            "endpoint_base_url": NULLABLE_STRING,
            "health_url": NULLABLE_STRING,
            "message": {"type": "string"},
        }
    ),
    "PowerOffResult": _object(
        {
            "status": {"const": "stopped"},
            "session_runtime_minutes": {"type": "number", "minimum": 0},
            "session_cost_usd": {"type": "number", "minimum": 0},
            "message": {"type": "string"},
        }
    ),
    "ActivityResult": _object({"status": {"const": "recorded"}, "last_activity": TIMESTAMP}),
    "KeepAliveRequest": _object(
        {
            "minutes": {
                "type": "number",
                "exclusiveMinimum": 0,
                "description": (
                    "Keep the instance running at least this many minutes from now, whatever "
                    "the idle time says; at most VAST_KEEPALIVE_MAX_MINUTES (default 480)."
                ),
            }
        }
    )
    | {"additionalProperties": True, "description": "Unknown fields are ignored."},
    "KeepAliveResult": _object(
        {
            "status": {"const": "kept"},
            "keepalive_until": TIMESTAMP,
            "idle_deadline": {
                "anyOf": [TIMESTAMP, {"type": "null"}],
                "description": "When the idle stop now falls due; null with auto-shutdown off.",
            },
            "capped": {
                "type": "boolean",
                "description": "True when the session cap ends the keep-alive sooner.",
            },
            "message": {"type": "string"},
        }
    ),
    "Costs": _object(
        {
            "total_runtime_hours": {"type": "number", "minimum": 0},
            "total_cost_usd": {"type": "number", "minimum": 0},
            "sessions_count": {"type": "integer", "minimum": 0},
            "avg_session_minutes": {"type": "number", "minimum": 0},
            **ALL_IN,
            "days": {
                "type": "array",
                "description": "The last 30 UTC days, oldest first.",
                "items": _ref_schema("CostDay"),
            },
            "contracts": {
                "type": "array",
                "description": (
                    "vast.ai's bill as it answers it: one entry per contract (a row of "
                    "GET /api/v0/charges/), newest first, each with its items, every one beside "
                    "vastpanel's estimate over exactly its own window. A contract spanning days "
                    "is one entry, never pinned on a day."
                ),
                "items": _ref_schema("BilledContract"),
            },
            "charges": _object(
                {
                    "read_at": {
                        "anyOf": [TIMESTAMP, {"type": "null"}],
                        "description": "When vast.ai's charges were last read.",
                    },
                    "error": {
                        **NULLABLE_STRING,
                        "description": "Why the last read failed (estimates only), or null.",
                    },
                    "reading": {
                        "enum": ["whole", "clipped", "clipped_amounts_only", None],
                        "description": (
                            "What vast.ai does with the asked day range, as a second question "
                            "(today alone) showed: whole (amounts are the whole contract's), "
                            "clipped (amounts and windows cut to the range), "
                            "clipped_amounts_only (amounts cut, windows not: such a window is "
                            "not comparable); null until a contract older than today was read."
                        ),
                    },
                }
            ),
            "budget": BUDGET,
        }
    ),
    "CostDay": _object(
        {
            "day": {"type": "string", "format": "date"},
            "estimate": _object({"gpu": USD, "storage": USD}),
            "billed": {
                "anyOf": [
                    _object({"gpu": USD, "disk": USD, "bandwidth": USD, "total": USD}),
                    {
                        "type": "null",
                        "description": (
                            "No contract of vast.ai's bill lies wholly in this day (vast.ai "
                            "bills per contract: see contracts), or the charges are not read."
                        ),
                    },
                ]
            },
            "difference_pct": {
                "type": ["number", "null"],
                "description": (
                    "(estimate - billed) / billed x 100 of the contracts lying in this day, "
                    "each over its own window; null when not comparable (none, or one began "
                    "before vastpanel's records)."
                ),
            },
            "mismatch": {
                "type": "boolean",
                "description": "A contract lying in this day is more than 1 % off.",
            },
        }
    ),
    "BilledContract": _object(
        {
            "source": {"type": "string", "description": "vast.ai's source, instance-<id>."},
            **BILLED_WINDOW,
            "mismatch": {
                "type": "boolean",
                "description": (
                    "Comparable, and the whole or its GPU or storage item more than 1 % (and "
                    "a cent) off; audited as cost_mismatch once per contract."
                ),
            },
            "summary": {
                "type": "string",
                "description": (
                    "In words, e.g. vast.ai billed $38.42 for Nov 1-4; estimate $38.10, -0.8 %."
                ),
            },
            "items": {
                "type": "array",
                "items": _object(
                    {
                        "type": {
                            "type": "string",
                            "description": "gpu, disk, bwd, bwu or sla (vast.ai's item types).",
                        },
                        **BILLED_WINDOW,
                        "description": NULLABLE_STRING,
                    }
                ),
            },
        }
    ),
    "Budget": BUDGET,
    "Recipe": _object(
        {
            "source_instance_id": {"type": "integer", "description": "Taken from this one."},
            "captured_at": {"anyOf": [TIMESTAMP, {"type": "null"}]},
            **RECIPE_FIELDS,
            "rebuild_problem": {
                **NULLABLE_STRING,
                "description": "Why no instance can be created from it (a move is refused), or null.",
            },
        }
    ),
    "RecipeChanges": {
        "type": "object",
        "description": "The fields to change; every one optional, unknown ones refused (422).",
        "properties": RECIPE_CHANGES,
        "additionalProperties": False,
    },
    "Stuck": _object(
        {
            "machine_id": MACHINE_ID,
            "since": {
                "anyOf": [TIMESTAMP, {"type": "null"}],
                "description": "Since when the start has waited in scheduling.",
            },
            "queued": {
                "type": "boolean",
                "description": "vast.ai answered resources_unavailable: someone else has the GPU.",
            },
        }
    ),
    "Offer": _object(
        {
            "id": {"type": "integer", "description": "The offer's id: POST /move's offer_id."},
            "machine_id": MACHINE_ID,
            "gpu_name": NULLABLE_STRING,
            "num_gpus": {"type": ["integer", "null"]},
            "gpu_ram_mb": {"type": ["number", "null"]},
            "dph_total": PRICE,
            "reliability": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
            "location": {**NULLABLE_STRING, "description": '"City, CC"'},
            "verified": {"type": "boolean"},
        }
    ),
    "Offers": _object(
        {
            "stuck": {
                "anyOf": [
                    _ref_schema("Stuck"),
                    {"type": "null", "description": "No start waits for a taken GPU."},
                ]
            },
            "offers": {
                "type": "array",
                "items": _ref_schema("Offer"),
                "description": (
                    "Offers equivalent to the recipe on other machines, cheapest first, then the "
                    "most reliable; read from vast.ai at most every 30 s."
                ),
            },
        }
    ),
    "MoveRequest": {
        "type": "object",
        "description": "Every field is optional; unknown fields are ignored.",
        "properties": {
            "offer_id": {
                "type": ["integer", "null"],
                "description": "Move to this offer (GET /offers); without it, to the best one.",
            },
            "go_on_without_copy": {
                "type": ["boolean", "null"],
                "default": False,
                "description": "Switch even when copying the recipe's copy_paths fails.",
            },
        },
    },
    "Move": _object(
        {
            "id": {"type": "integer", "minimum": 1},
            "state": {"enum": list(MOVE_STEPS)},
            "step": {"type": "string", "description": "What the state means, in words."},
            "active": {"type": "boolean", "description": "True until done or failed."},
            "actor": {"enum": list(ACTORS)},
            "requested_at": TIMESTAMP,
            "step_since": TIMESTAMP,
            "finished_at": {"anyOf": [TIMESTAMP, {"type": "null"}]},
            "old_instance_id": INSTANCE_ID,
            "old_machine_id": MACHINE_ID,
            "chosen_offer_id": {"type": ["integer", "null"]},
            "go_on_without_copy": {"type": "boolean"},
            "offers_tried": {"type": "integer", "minimum": 0},
            "new_instance_id": {"type": ["integer", "null"]},
            "new_machine_id": MACHINE_ID,
            "new_dph_total": {"type": ["number", "null"], "minimum": 0},
            "note": {**NULLABLE_STRING, "description": "e.g. what the copy did."},
            "error": {**NULLABLE_STRING, "description": "Why the move failed, or null."},
        }
    ),
    "KnownInstance": _object(
        {
            "id": INSTANCE_ID,
            "state": {
                "enum": ["current", "booting", "kept", "stopped", "destroyed"],
                "description": (
                    "current: the one the panel controls; booting: a move's new one, not yet "
                    "switched to; kept: left by a move, stopped, still billed for storage; "
                    "stopped: a failed move's new one, stopped (still billed for storage); "
                    "destroyed: gone."
                ),
            },
            "origin": {"enum": ["first", "created"]},
            "machine_id": MACHINE_ID,
            "dph_total": {"type": ["number", "null"], "minimum": 0},
            "label": NULLABLE_STRING,
            "move_id": {"type": ["integer", "null"]},
            "note": NULLABLE_STRING,
            "created_at": TIMESTAMP,
            "updated_at": TIMESTAMP,
        }
    ),
    "Instances": _object(
        {
            "current_instance_id": {
                "type": ["integer", "null"],
                "description": "The instance the panel controls (VAST_INSTANCE_ID until a move).",
            },
            "instances": {"type": "array", "items": _ref_schema("KnownInstance")},
        }
    ),
    "BudgetOverrideRequest": {
        "type": "object",
        "description": "Exactly one of extra_usd and until.",
        "properties": {
            "extra_usd": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": 1_000_000,
                "description": (
                    "Dollars more: the period may then cost the budget (or what is already "
                    "spent, if more) plus this, until the period ends."
                ),
            },
            "until": {
                "type": "string",
                "format": "date-time",
                "description": (
                    "Until this time, with its zone (2024-05-01T18:00:00Z or +02:00): after "
                    "now and at most the period's end."
                ),
            },
        },
        "oneOf": [{"required": ["extra_usd"]}, {"required": ["until"]}],
    },
    "AuditEntry": _object(
        {
            "id": {
                "type": "integer",
                "minimum": 1,
                "description": "The entry's id; pass it as `before` to read older entries.",
            },
            "ts": TIMESTAMP,
            "event": {
                "enum": list(EVENTS),
                "description": "What happened: "
                + "; ".join(f"{name}: {event.label}" for name, event in EVENTS.items())
                + ".",
            },
            "actor": {
                "enum": list(ACTORS),
                "description": "Who acted: "
                + "; ".join(f"{name}: {who}" for name, who in ACTORS.items())
                + ".",
            },
            "meta": {"type": "object", "description": "Event details; secrets are redacted."},
        }
    ),
    **SCHEDULE_SCHEMAS,
}


def _operation(
    operation_id: str,
    summary: str,
    ok: dict[str, Any],
    errors: dict[str, Any],
    ok_code: str = "200",
    *,
    gateway: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """Describe one API operation; gateway true: a key of GATEWAY_API_KEYS may call it."""
    responses = {
        ok_code: ok,
        "401": UNAUTHORIZED,
        **({} if gateway else {"403": GATEWAY_ONLY}),
        "413": TOO_LARGE,
        "429": LOCKED_OUT,
        "503": DISABLED,
        **errors,
    }
    responses.setdefault("500", INTERNAL)
    return {
        "operationId": operation_id,
        "summary": summary,
        **extra,
        "responses": dict(sorted(responses.items())),
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "vastpanel",
        "version": _package_version(),
        "description": (
            "Controls one rented vast.ai GPU instance. Every endpoint under /infra/vast needs "
            "the X-API-Key header (the server's CONTROL_API_KEY), except this description. "
            'Every error answers {"detail": "..."}.'
        ),
    },
    "security": [{"ApiKey": []}],
    "paths": {
        f"{PREFIX}/status": {
            "get": _operation(
                "status",
                "The instance, its idle countdown and the cost so far",
                _json(_ref("Status"), "The instance as the panel sees it."),
                {"502": UPSTREAM},
            )
        },
        f"{PREFIX}/power/on": {
            "post": _operation(
                "power_on",
                "Start the instance, by default waiting until its health URL answers",
                _json(_ref("PowerOnResult"), "Started (or already running or starting)."),
                {
                    "409": _error(
                        "Another power action is still running, the budget of this period "
                        "is spent (until the period ends or an admin overrides it), or the "
                        "instance's contract has ended (contract_ends_at passed: vast.ai cannot "
                        "start it again)."
                    ),
                    "422": INVALID,
                    "500": NOT_CONFIGURED,
                    "502": UPSTREAM,
                    "504": _error(
                        "The instance did not answer its health URL within VAST_WAIT_TIMEOUT_S."
                    ),
                },
                requestBody={
                    "required": False,
                    "description": "Optional; an empty body counts as {}.",
                    "content": {"application/json": {"schema": _ref("PowerOnRequest")}},
                },
            )
        },
        f"{PREFIX}/power/off": {
            "post": _operation(
                "power_off",
                "Stop the instance (cancelling a queued start) and close its session",
                _json(_ref("PowerOffResult"), "Stopped, or already stopped (zero session)."),
                {"409": BUSY, "422": INVALID, "500": NOT_CONFIGURED, "502": UPSTREAM},
                requestBody=IGNORED_BODY,
            )
        },
        f"{PREFIX}/activity": {
            "post": _operation(
                "record_activity",
                "Note LLM use now (the gateway calls it on every request)",
                _json(_ref("ActivityResult"), "Recorded; last_activity never moves backwards."),
                {"422": INVALID},
                gateway=True,
                requestBody=IGNORED_BODY,
            )
        },
        f"{PREFIX}/keepalive": {
            "post": _operation(
                "keepalive",
                "Keep the instance running at least N minutes more (audited; never past a cap)",
                _json(_ref("KeepAliveResult"), "The idle deadline is held until keepalive_until."),
                {
                    "409": _error("No session is open: the instance is not running."),
                    "422": INVALID,
                },
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": _ref("KeepAliveRequest")}},
                },
            )
        },
        f"{PREFIX}/costs": {
            "get": _operation(
                "costs",
                "Runtime and cost over all sessions, the open one included",
                _json(_ref("Costs"), "Totals."),
                {},
            )
        },
        f"{PREFIX}/budget/override": {
            "post": _operation(
                "budget_override",
                "Let power-on through despite a spent budget, for an amount or until a time "
                "(audited); past it, the budget stops the instance again",
                _json(_ref("Budget"), "The budget, with the override in force."),
                {
                    "409": _error("No budget is set (VAST_BUDGET_USD)."),
                    "422": _error(
                        "Neither or both of extra_usd and until, or one out of bounds; the "
                        "detail says which. Nothing was changed."
                    ),
                },
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": _ref("BudgetOverrideRequest")}},
                },
            )
        },
        f"{PREFIX}/schedule": {
            "get": _operation(
                "schedule",
                "The schedule of warm hours in force, its next start and what it costs",
                _json(_ref("Schedule"), "The schedule as the panel applies it now."),
                {},
            ),
            "put": _operation(
                "replace_schedule",
                "Store a schedule that wins over the environment's (audited)",
                _json(_ref("Schedule"), "Stored; in force from now (the watchdog's next look)."),
                {
                    "422": _error(
                        "A field is unusable (the detail names it and, for the schedule, the "
                        "column): nothing was changed."
                    )
                },
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": _ref("ScheduleRequest")}},
                },
            ),
            "delete": _operation(
                "clear_schedule",
                "Forget the stored schedule: the environment's applies again (audited)",
                _json(_ref("Schedule"), "The schedule in force now."),
                {"422": INVALID},
                requestBody=IGNORED_BODY,
            ),
        },
        f"{PREFIX}/audit": {
            "get": _operation(
                "audit",
                "Audit entries, newest first",
                {
                    **_json({"type": "array", "items": _ref("AuditEntry")}, "Up to limit entries."),
                    "headers": {
                        "Link": {
                            "description": (
                                'When older entries exist: `<...?before=ID&limit=N>; rel="next"`, '
                                "the URL (relative to this one) of the next page."
                            ),
                            "schema": {"type": "string"},
                        }
                    },
                },
                {"422": INVALID},
                parameters=[
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50},
                    },
                    {
                        "name": "before",
                        "in": "query",
                        "required": False,
                        "description": "Only entries older than this entry id (paging).",
                        "schema": {"type": "integer", "minimum": 1},
                    },
                ],
            )
        },
        f"{PREFIX}/recipe": {
            "get": _operation(
                "recipe",
                "The recipe a move creates the new instance from (taken from vast.ai once)",
                _json(_ref("Recipe"), "The recipe; secrets as ***."),
                {"500": NOT_CONFIGURED, "502": UPSTREAM},
            ),
            "put": _operation(
                "edit_recipe",
                "Change fields of the recipe (audited with the fields' names, never values)",
                _json(_ref("Recipe"), "The recipe as changed; secrets as ***."),
                {"422": INVALID, "500": NOT_CONFIGURED, "502": UPSTREAM},
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": _ref("RecipeChanges")}},
                },
            ),
        },
        f"{PREFIX}/offers": {
            "get": _operation(
                "offers",
                "Whether a start is stuck, and equivalent offers on other machines",
                _json(_ref("Offers"), "The offers, best first."),
                {"500": NOT_CONFIGURED, "502": UPSTREAM},
            )
        },
        f"{PREFIX}/move": {
            "get": _operation(
                "move",
                "The move under way, or the last one",
                _json({"anyOf": [_ref("Move"), {"type": "null"}]}, "The move; null if none."),
                {},
            ),
            "post": _operation(
                "request_move",
                "Move to another machine: the old start is cancelled, the recipe created on "
                "the offer, and the panel switches once the new instance is healthy. What "
                "lived on the old disk does not come along, except the recipe's copy_paths.",
                _json(_ref("Move"), "Asked; the watchdog carries it out (follow GET /move)."),
                {
                    "409": _error(
                        "Refused, the detail says why: moving is off (VAST_MOVE), a move is "
                        "under way, the instance runs on its own machine, the offer is not "
                        "among the offers now, the recipe cannot be rebuilt (a private image "
                        "without its login), or the budget is spent."
                    ),
                    "422": INVALID,
                    "500": NOT_CONFIGURED,
                    "502": UPSTREAM,
                },
                ok_code="202",
                requestBody={
                    "required": False,
                    "description": "Optional; an empty body counts as {}.",
                    "content": {"application/json": {"schema": _ref("MoveRequest")}},
                },
            ),
        },
        f"{PREFIX}/instances": {
            "get": _operation(
                "instances",
                "Every instance the panel knows (the first, and those moves created)",
                _json(_ref("Instances"), "The instances, the first one first."),
                {},
            )
        },
        f"{PREFIX}/instances/{{instance_id}}/destroy": {
            "post": _operation(
                "destroy_instance",
                "Destroy an instance a move left behind: its disk is gone for good (audited)",
                _json(_ref("KnownInstance"), "Destroyed."),
                {
                    "409": _error("vast.ai did not destroy it; the detail says why."),
                    "422": _error(
                        "Not an instance the panel keeps, the current one, one a move under "
                        "way uses, or not a number."
                    ),
                    "500": NOT_CONFIGURED,
                },
                parameters=[
                    {"name": "instance_id", "in": "path", "required": True, "schema": INSTANCE_ID}
                ],
                requestBody=IGNORED_BODY,
            )
        },
        f"{PREFIX}/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This description; needs no key",
                "security": [],
                "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
            }
        },
    },
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {
            "ApiKey": {
                "type": "apiKey",
                "in": "header",
                "name": "X-API-Key",
                "description": (
                    "The server's CONTROL_API_KEY; for POST /infra/vast/activity alone, also "
                    "one of GATEWAY_API_KEYS."
                ),
            }
        },
    },
}


@bp.get(f"{PREFIX}/openapi.json")
def openapi_json():
    """Serve the OpenAPI description, without X-API-Key."""
    return jsonify(SPEC)
