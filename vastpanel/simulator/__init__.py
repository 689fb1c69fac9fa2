"""A faithful vast.ai simulator over real HTTP, for the demo and the end-to-end tests.

It plays one vast.ai account holding one instance, in the shapes of ``vast-api.md`` and of
what the official ``vastai`` client (1.9.1) sends. Two servers, both on 127.0.0.1 only:

The API server (``Simulator.url``), Bearer auth (``?api_key=`` is accepted too, as vast.ai does):
    GET  /api/v0/instances/{id}/?owner=me   200 {"instances": {...}} or {"instances": null}
    PUT  /api/v0/instances/{id}/            {"state": "running"|"stopped"} -> 200 {"success": true}
    GET  /api/v0/users/current/             the little the official client asks on every command
    GET  /api/v0/charges/?select_filters=...&limit=N&after_token=T
                                            the instance's charges, one row per UTC day:
                                            {start, end, type, source, amount, items: [{type:
                                            gpu|disk|bwd|bwu, amount, description}]}, paged by
                                            next_token; 403 when told the key lacks billing_read
  A bad key answers 401 auth_error, a non-integer id or a bad PUT body 400 invalid_args, a PUT
  for an unknown id 404 no_such_instance. The instance's own key (``backend.instance_api_key``,
  vast.ai's CONTAINER_API_KEY) is accepted only for ``PUT {"state": "stopped"}`` on that
  instance; the request log says whose key came (``auth``: account or instance), never the key.

  Lifecycle, measured on an injectable clock and derived on each request (no threads):
    stopped -> scheduling (intended running, actual stopped; ``schedule_delay``)
            -> loading (``load_delay``) -> running; the model answers /health ``warm_delay``
            seconds later. A stop goes to stopped after ``stop_delay``, while actual still
            shows the old status. ``initial_state="creating"`` starts with actual null for
            ``create_delay``. ``ports`` (8000/tcp and 8001/tcp -> the LLM port, as a string,
            or what ``host_ports`` says) exist only while running.

  ``agent=AgentSettings(...)``: the real deploy/instance/vastpanel_agent.py runs as a
  subprocess while the instance runs, with CONTAINER_ID and CONTAINER_API_KEY set (agent.py).

The LLM stack (``Simulator.llm_url``, the HostPort of the mapped ports):
    GET /health                  502 unless running and warm, then 200 with an empty body
    GET /metrics                 vLLM's Prometheus text (llm_metrics.py): running/waiting gauges
                                 and request/token counters that move with the requests served;
                                 404 with ``LlmConfig(serve_metrics=False)``
    GET /v1/models               OpenAI model list (502 while not up)
    POST /v1/chat/completions    a fixed completion, OpenAI shape; "stream": true gives SSE,
                                 one token per ``token_delay_s``; ``max_tokens`` sets its length

Control routes on the API server (loopback only, no auth, never in the request log):
    GET    /_sim/state      instance, faults, timing, clock, llm_port
    POST   /_sim/fault      {"kind": K, "count": N|null, "method": "GET"|"PUT"|null,
                             "delay": s, "status": code, "body": obj|str, "headers": {},
                             "retry_after": s, "text": bool}
    DELETE /_sim/fault      remove all faults (?kind=K for one kind)
    POST   /_sim/external   {"action": "start"|"stop"|"exit"|"vanish"|"appear"} (the console),
                            or "created"|"frozen"|"rebooting"|"unknown"|"offline": that
                            actual_status until "recover", a start or a stop (rebooting
                            ends by itself after load_delay)
    GET    /_sim/requests   {"requests": [{method, path, query, json, status, time}], "count"}
                            (?method=, ?path=, ?server=llm); the key is never recorded
    DELETE /_sim/requests   empty the logs
    POST   /_sim/reset      initial state, no faults, empty logs
    POST   /_sim/timing     {"schedule_delay": s, ...} for transitions from now on
    POST   /_sim/pause      {"seconds": s}: the API refuses connections, then comes back
    POST   /_sim/llm        {"token_delay_s": s, "serve_metrics": bool, "max_num_seqs": n}
    POST   /_sim/billing    {"factor": {"gpu": 1.5, ...}, "billing_read": false, "dph_base": x,
                            "storage_cost": y}: bill differently from now on

  Billing (billing.py), as vast.ai bills: GPU (dph_base) per second while running, storage
  (storage_cost x disk_space / 720 $/h) per second in every state until the instance vanishes,
  and bandwidth per byte of LLM traffic; accrued on the instance's clock, bucketed by UTC day.

Fault kinds (``Simulator.add_fault(kind, **options)`` or POST /_sim/fault):
    response               any status and body (``status`` required)
    rate_limit             429, JSON {"detail": ...} or ``text=True``; ``retry_after`` header

Rate limits are on by default, as on vast.ai: a request sooner than GET 2 s / PUT 1 s after
the last accepted one for the same key and endpoint answers 429 with the plain-text body
``API requests too frequent: endpoint threshold=2.0`` and no Retry-After
(``Simulator(rate_limit={})`` or ``--rate-limit-get 0 --rate-limit-put 0`` turn them off).
    html                   an HTML proxy page instead of JSON, 502 (or ``status=200``)
    slow                   answer normally after ``delay`` seconds
    resources_unavailable  a start answers 200 success false and stays in scheduling
                           until a stop or until the fault is cleared (no ``count``)
    missing_billing        a start answers 400 missing_billing (until cleared by default)
The first four answer before auth, as a proxy would; ``count`` defaults to 1 for them.

Run standalone: ``python -m vastpanel.simulator --port 0 --api-key KEY --instance-id 123``.
"""

from .agent import AgentSettings
from .backend import LlmConfig
from .faults import KINDS as FAULT_KINDS
from .faults import Fault
from .instance import Hardware, ManualClock, Timing
from .runner import Simulator

__all__ = [
    "AgentSettings",
    "FAULT_KINDS",
    "Fault",
    "Hardware",
    "LlmConfig",
    "ManualClock",
    "Simulator",
    "Timing",
]
