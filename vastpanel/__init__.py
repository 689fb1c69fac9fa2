"""vastpanel: keeps one rented vast.ai GPU under control."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from flask import Flask, jsonify, request
from htmx_flask import Htmx
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .addresses import ClientAddress, TrustedProxies
from .config import Config, ConfigError
from .logs import configure_logging

if TYPE_CHECKING:  # requests is imported late (see below), and the parts only to be named here
    import requests

    from .clock import Clock
    from .domain import Panel

ROOT = Path(__file__).resolve().parent.parent
API_PREFIX = "/infra/vast"
# Request bodies: the API takes small JSON objects and the page small forms, so anything larger
# is refused (413) before it is read. The /v1/ pass-through raises the limit for its own
# requests (web/proxy.py), in an app hook that runs before the check.
MAX_BODY_BYTES = 64 * 1024

htmx = Htmx()
log = logging.getLogger("vastpanel")

__all__ = ["Config", "ConfigError", "create_app"]


def create_app(
    config: Config | None = None,
    *,
    clock: Clock | None = None,
    http: requests.Session | None = None,
) -> Flask:
    """Build the app from config, or from the environment when config is None.

    clock and http replace the real clock and the HTTP session to vast.ai and the instance
    (tests fake both). The auto-shutdown watchdog starts unless config.watchdog is false
    (VASTPANEL_WATCHDOG); with config.testing, only if it is true.
    """
    if config is None:
        config = Config.from_env(os.environ)
    app = Flask(
        __name__,
        root_path=str(ROOT),
        template_folder=str(ROOT / "templates"),
        static_folder=str(ROOT / "static"),
    )
    app.config.from_mapping(
        TESTING=config.testing,
        JSON_SORT_KEYS=False,
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
    )
    if not app.testing:
        configure_logging()  # lines to stderr with time and level, unless already configured
    for warning in config.warnings:  # values from_env adjusted, e.g. a clamped warning time
        log.warning(warning)
    # Imported here, not at the top: gunicorn.conf.py imports this package in gunicorn's master,
    # and the gevent worker must monkey-patch ssl before requests/urllib3 import names from it.
    from . import watchdog
    from .cli import running_cli_command, vast
    from .web import EXTENSION, api, auth, liveness, openapi, pages, prometheus, proxy

    # `flask --app app vast ...` and other commands (not `flask run`) serve nothing: no
    # watchdog, no secret key file, and no database created before a command asks for one.
    command_only = running_cli_command()
    panel = wire_panel(config, clock, http, open_now=not command_only)
    app.extensions[EXTENSION] = panel
    # flaskr's rule: nothing a request opens outlives it. Each request (a greenlet under
    # gevent, a thread otherwise) gets its own SQLite connection on first use; it is given
    # back here rather than left to the thread-local.
    app.teardown_appcontext(lambda _exc: panel.store.close())
    htmx.init_app(app)

    # /v1/: the LLM pass-through, with its own keys (LLM_API_KEYS); first, because it raises
    # the body limit for its requests before the check below reads it.
    proxy.init_app(app)
    # Before the key check and CSRF: a body announced too large is refused unread, a chunked
    # one once it is past the limit.
    app.before_request(_refuse_large_body)
    app.register_blueprint(api.bp)
    app.register_blueprint(liveness.bp)
    app.register_blueprint(prometheus.bp)  # its own access rule: METRICS_TOKEN or loopback
    app.register_blueprint(openapi.bp)  # its own blueprint: served without X-API-Key
    # The session cookie, sign-in and CSRF (the API is exempt).
    auth.init_app(app, panel, keep_secret_key=not command_only)
    app.register_blueprint(pages.bp)
    app.cli.add_command(vast)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    # Outermost: every part of the app, and gunicorn's access line, see the client's address.
    app.wsgi_app = ClientAddress(app.wsgi_app, TrustedProxies(config.forwarded_allow_ips))

    if command_only:
        log.debug("watchdog: not started for a CLI command")
    else:
        watchdog.init_app(app, panel)

    if not config.control_api_key and not command_only:
        log.warning("CONTROL_API_KEY is not set: every %s request is refused.", API_PREFIX)
    if not config.vast_configured and not command_only:
        log.warning(
            "%s not set: status is 'unconfigured'.", " and ".join(config.missing_vast_settings)
        )
    return app


def wire_panel(
    config: Config,
    clock: Clock | None = None,
    http: requests.Session | None = None,
    *,
    open_now: bool = True,
) -> Panel:
    """Build the domain's parts, each with what it uses, and return them together.

    open_now false (a CLI command) leaves the database unopened until a command asks for it.
    """
    import requests

    from .clock import Clock
    from .counters import observe_vast_call
    from .domain import (
        AgentLink,
        Audit,
        Budget,
        Caps,
        Contract,
        CostBook,
        IdleRule,
        InstanceReader,
        KeyGuard,
        LeaseHolder,
        LlmLoad,
        Mover,
        Notifier,
        Panel,
        Power,
        RecipeBook,
        ScheduleBook,
        ScheduledStart,
        SignIns,
        StatusReader,
        Wake,
    )
    from .instance_http import InstanceHttp
    from .logs import install_redaction
    from .storage.database import Store
    from .vast.client import VastClient

    install_redaction(config.secrets)
    clock = clock or Clock()
    http = http or requests.Session()
    store = Store(config.db_path, open_now=open_now)
    client = (
        VastClient(
            config.vast_url,
            config.vast_api_key,
            session=http,
            sleep=clock.sleep,
            observe=observe_vast_call,
        )
        if config.vast_configured
        else None
    )
    # The instance is reached over a session of its own: pinned TLS, no environment proxies.
    instance_http = InstanceHttp(config)
    leases = LeaseHolder(store, clock)
    audit = Audit(store, clock, config)
    costs = CostBook(store, clock, config, client, audit)
    agent = AgentLink(store, clock, config, instance_http, audit)
    contract = Contract(store, clock, config, audit)
    recipes = RecipeBook(store, clock, config, client, audit)
    instance = InstanceReader(
        store, clock, config, client, audit, costs, agent, leases, contract, recipes
    )
    budget = Budget(store, clock, config, costs, audit)
    mover = Mover(
        store, clock, config, client, instance_http, audit, instance, budget, costs, recipes
    )
    power = Power(
        store,
        clock,
        config,
        client,
        instance_http,
        audit,
        instance,
        costs,
        budget,
        leases,
        contract,
        mover,
    )
    llm = LlmLoad(store, clock, config, instance_http, audit, instance, leases)
    schedule = ScheduleBook(store, clock, config, audit, instance, costs, budget)
    idle = IdleRule(store, clock, config, audit, instance, llm, power, budget, leases, schedule)
    return Panel(
        config=config,
        clock=clock,
        store=store,
        http=http,
        instance_http=instance_http,
        client=client,
        leases=leases,
        audit=audit,
        costs=costs,
        agent=agent,
        contract=contract,
        instance=instance,
        budget=budget,
        recipes=recipes,
        mover=mover,
        power=power,
        caps=Caps(store, clock, config, audit, instance, budget, power),
        llm=llm,
        idle=idle,
        wake=Wake(store, clock, config, instance, power, idle, leases, contract, mover),
        notifier=Notifier(store, clock, config, http),
        signins=SignIns(store, clock),
        keys=KeyGuard(store, clock, config, audit),
        status=StatusReader(store, clock, config, instance, idle, costs, budget, agent),
        schedule=schedule,
        scheduled_start=ScheduledStart(store, clock, config, audit, instance, power, schedule),
    )


def _refuse_large_body() -> None:
    """Refuse a request whose body is over this request's limit.

    A Content-Length over it is refused without reading the body. A chunked body (no length)
    under the app's own limit is read here, whole, before anything else looks at it: Werkzeug
    would stop reading at the limit and hand on the first part as if it were all, so a body
    one byte over must be seen as such. The /v1/ pass-through reads its own bodies.
    """
    limit = request.max_content_length
    if limit is None:
        return
    if (request.content_length or 0) > limit:
        raise RequestEntityTooLarge(f"The request body is too large: at most {limit} bytes.")
    if limit == MAX_BODY_BYTES and request.content_length is None and _is_chunked():
        body = request.get_data(cache=True)  # at most the limit: Werkzeug stops there
        if len(body) >= limit and request.environ["wsgi.input"].read(1):
            raise RequestEntityTooLarge(f"The request body is too large: at most {limit} bytes.")


def _is_chunked() -> bool:
    """Tell whether the request's body comes in chunks, its length unknown until its end."""
    return "chunked" in request.headers.get("Transfer-Encoding", "").lower()


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
