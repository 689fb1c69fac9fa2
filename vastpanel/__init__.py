"""vastpanel: keeps one rented vast.ai GPU under control."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask, jsonify, request
from htmx_flask import Htmx
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .config import Config, ConfigError
from .log_config import configure_logging

ROOT = Path(__file__).resolve().parent.parent
API_PREFIX = "/infra/vast"
# Request bodies: the API takes small JSON objects and the page small forms, so anything larger
# is refused (413) before it is read. The LLM proxy's /v1/ routes will need up to 32 MiB: raise
# the limit for those requests only, in that blueprint's before_request, with
# `request.max_content_length = LLM_MAX_BODY_BYTES` (Flask 3.1 lets one request raise it).
MAX_BODY_BYTES = 64 * 1024
LLM_MAX_BODY_BYTES = 32 * 1024 * 1024

htmx = Htmx()
log = logging.getLogger("vastpanel")

__all__ = ["ConfigError", "create_app"]


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app from the environment, or from test_config alone when it is given.

    test_config holds the same variable names as the environment (VAST_API_KEY, ...), plus
    optional objects: CLOCK (a Clock) and HTTP_SESSION (a requests.Session). The auto-shutdown
    watchdog starts unless VASTPANEL_WATCHDOG is false; with test_config, only if it is true.
    """
    source = os.environ if test_config is None else test_config
    config = Config.from_env({k: v for k, v in source.items() if isinstance(v, str)})
    app = Flask(
        __name__,
        root_path=str(ROOT),
        template_folder=str(ROOT / "templates"),
        static_folder=str(ROOT / "static"),
    )
    app.config.from_mapping(
        TESTING=test_config is not None,
        JSON_SORT_KEYS=False,
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
    )
    if test_config is not None:
        app.config.update({k: v for k, v in test_config.items() if k in ("TESTING",)})
    if not app.testing:
        configure_logging()  # lines to stderr with time and level, unless already configured
    # Imported here, not at the top: gunicorn.conf.py imports this package in gunicorn's master,
    # and the gevent worker must monkey-patch ssl before requests/urllib3 import names from it.
    from .cli import running_cli_command
    from .panel import Panel

    # `flask --app app vast ...` and other commands (not `flask run`) serve nothing: no
    # watchdog, no secret key file, and no database created before a command asks for one.
    command_only = running_cli_command()
    panel = Panel(
        config,
        clock=(test_config or {}).get("CLOCK"),
        http=(test_config or {}).get("HTTP_SESSION"),
        open_now=not command_only,
    )
    app.extensions["vastpanel"] = panel
    # flaskr's rule: nothing a request opens outlives it. Each request (a thread, or a greenlet
    # under gevent, where every request is a new one) gets its own SQLite connection on first
    # use; it is closed here rather than left to the thread-local, which would keep one per
    # greenlet until the garbage collector found it.
    app.teardown_appcontext(lambda _exc: panel.close())
    htmx.init_app(app)

    from . import api, auth, cli, health, metrics, openapi, pages

    # First of all the hooks (before the key check and CSRF): a body announced too large is
    # refused unread. A chunked one is cut by Werkzeug when it is read past the limit.
    app.before_request(_refuse_large_body)
    app.register_blueprint(api.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)  # its own access rule: METRICS_TOKEN or loopback
    app.register_blueprint(openapi.bp)  # its own blueprint: served without X-API-Key
    # The session cookie, sign-in and CSRF (the API is exempt).
    auth.init_app(app, source, panel, keep_secret_key=not command_only)
    app.register_blueprint(pages.bp)
    app.cli.add_command(cli.vast)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)

    from . import watchdog

    if command_only:
        log.debug("watchdog: not started for a CLI command")
    else:
        watchdog.init_app(app, panel, source, testing=test_config is not None)

    if not config.control_api_key and not command_only:
        log.warning("CONTROL_API_KEY is not set: every %s request is refused.", API_PREFIX)
    if not config.vast_configured and not command_only:
        log.warning(
            "%s not set: status is 'unconfigured'.", " and ".join(config.missing_vast_settings)
        )
    return app


def _refuse_large_body() -> None:
    """Refuse a request whose Content-Length is over this request's limit, without reading it."""
    limit = request.max_content_length
    if limit is not None and (request.content_length or 0) > limit:
        raise RequestEntityTooLarge(f"The request body is too large: at most {limit} bytes.")


def _http_error(exc: HTTPException):
    """Answer JSON to API clients; leave other paths to Flask's HTML pages."""
    if request.path.startswith(API_PREFIX):
        detail = exc.description or exc.name
        if isinstance(exc, RequestEntityTooLarge) and request.max_content_length is not None:
            detail = f"The request body is too large: at most {request.max_content_length} bytes."
        return jsonify(detail=detail), exc.code or 500
    return exc


def _unexpected_error(exc: Exception):
    """Log a crash without its request data and answer a plain error."""
    if isinstance(exc, HTTPException):
        return _http_error(exc)
    log.exception("Unexpected error on %s %s", request.method, request.path)
    if request.path.startswith(API_PREFIX):
        return jsonify(detail="Internal error; see the server log."), 500
    return "Internal error; see the server log.", 500
