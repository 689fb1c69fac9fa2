"""A faithful vast.ai simulator over real HTTP, for the demo and the end-to-end tests.

It plays one vast.ai account and a small market, in the shapes of ``vast-api.md`` and of what
the official ``vastai`` client (1.9.1) sends; where vast.ai's sources say more, it follows them,
and each module names the source it follows. The account starts with one instance (the
"first"); creating from an offer adds more, each on its own machine's terms with its own LLM
stack on its own port. Servers, all on 127.0.0.1 only:

The API server (``Simulator.url``), Bearer auth (``?api_key=`` is accepted too, as vast.ai does):
    GET  /api/v0/instances/?owner=me        200 {"instances": [...]}: every instance of the account
    GET  /api/v0/instances/{id}/?owner=me   200 {"instances": {...}} or {"instances": null}
    PUT  /api/v0/instances/{id}/            {"state": "running"|"stopped"} -> 200 {"success": true}
    DELETE /api/v0/instances/{id}/          200 {"success": true}; gone for good (rentals.py)
    POST /api/v0/bundles/                   search offers, no key needed: the query's filters
                                            (eq neq gt gte lt lte in notin), limit, order,
                                            type, allocated_storage -> {"offers": [...]}
                                            (market.py); about 10 a minute
    PUT  /api/v0/asks/{offer_id}/           create on an offer: {image, template_hash_id,
                                            disk, runtype, env, onstart, args, label,
                                            image_login, cancel_unavail, target_state} -> 200
                                            {"success", "new_contract", "instance_api_key"};
                                            404 invalid_args "no_such_ask ... is not
                                            available", 410 no_such_ask "... no longer
                                            available" (cancel_unavail), 429 at 4.5 s
    PUT  /api/v0/commands/copy_direct/      {client_id, src_id, dst_id, src_path, dst_path}
                                            -> 200 {"success", "msg"}; progress in both
                                            instances' status_msg (copying.py)
    GET  /api/v0/users/current/             the little the official client asks on every command
    GET  /api/v0/charges/?select_filters=...&limit=N&after_token=T&latest_first=B
                                            one row per contract (charges.py, billing.py):
                                            {start, end, type, source, description, amount,
                                            metadata, items: [{start, end, type: gpu|disk|bwd|bwu,
                                            source, description, amount, metadata, items}]}, in
                                            {success, count, total, next_token, results}
  A bad key answers 401 auth_error, a non-integer id or a bad PUT body 400 invalid_args, a PUT
  for an unknown id 404 no_such_instance. The charges endpoint answers as documented instead:
  403 auth_error "This action requires login." without a key, 404 auth_error "Invalid user
  key" for an unknown one, 400 without the ``day`` range, 400 invalid_token for a bad
  ``after_token``, 403 when told the key lacks billing_read. An instance's own key
  (``backend.instance_api_key`` for the first, ``instance_api_key`` of a create; vast.ai's
  CONTAINER_API_KEY) is accepted only to stop or destroy that instance; the request log says
  whose key came (``auth``: account or instance), never the key, nor a registry login.

  Lifecycle, measured on an injectable clock and derived on each request (no threads):
    stopped -> scheduling (intended running, actual stopped; ``schedule_delay``)
            -> loading (``load_delay``) -> running; the model answers /health ``warm_delay``
            seconds later. A stop goes to stopped after ``stop_delay``, while actual still
            shows the old status. ``initial_state="creating"`` starts with actual null for
            ``create_delay``. ``ports`` (8000/tcp and 8001/tcp -> the LLM port, as a string,
            or what ``host_ports`` says) exist only while running. A created instance
            shows actual null for ``create_delay``, then loads and runs the same way, and
            maps the ports its ``env`` asks (``-p 8001:8001``).
  Show instance gives each instance's recipe (``image_uuid``, ``image_args``,
  ``image_runtype``, ``extra_env``, ``onstart``, ``template_hash_id``, ``volume_info``) and
  its machine (``machine_id``, ``gpu_name``, ``num_gpus``, ``gpu_ram``, ``geolocation``,
  ``reliability2``, ``verification``, ``dph_total``).
  Other renters: a machine's GPU is held by a running instance of the account, or taken by
  someone else (``/_sim/market``, ``Simulator(gpu_taken=True)``, ``--gpu-taken``); a start
  on a taken machine answers 200 resources_unavailable and stays in scheduling until the GPU
  is freed or the start is cancelled by a stop.
  The contract ends at ``end_date`` (epoch seconds; ``Hardware.contract_days`` after the
  simulator starts, or ``contract_ends_at``): the instance stops, a start answers 400
  contract_expired (vast.ai documents no answer: an assumption), storage is still billed, and
  48 h later the instance is deleted ({"instances": null}), as vast.ai's guides say.

  ``agent=AgentSettings(...)``: the real deploy/instance/vastpanel_agent.py runs as a
  subprocess while the instance runs, with CONTAINER_ID and CONTAINER_API_KEY set (agent.py).

The LLM stack of each instance (``Simulator.llm_url`` for the first, ``llm_url_of(id)``; the
HostPort of its mapped ports):
    GET /health                  502 unless running and warm, then 200 with an empty body
    GET /metrics                 vLLM's Prometheus text (vllm_metrics.py): running/waiting gauges
                                 and request/token counters that move with the requests served;
                                 the gauges stick when every request in flight is aborted, as
                                 vLLM's do (``LlmConfig(sticky_gauges=False)``: they drop);
                                 404 with ``LlmConfig(serve_metrics=False)``; no vllm:
                                 sample with ``LlmConfig(log_stats=False)`` (vLLM's
                                 --disable-log-stats)
    GET /v1/models               OpenAI model list (502 while not up)
    POST /v1/chat/completions    a fixed completion, OpenAI shape; "stream": true gives SSE,
                                 one token per ``token_delay_s``; ``max_tokens`` sets its length;
                                 closing the connection mid-stream aborts the generation

Control routes on the API server (loopback only, no auth, never in the request log):
    GET    /_sim/state      instance, faults, timing, clock, llm_port, billing, contract, llm
    POST   /_sim/fault      {"kind": K, "count": N|null, "method": "GET"|"PUT"|null,
                             "path": "/charges/"|null, "delay": s, "status": code,
                             "body": obj|str, "headers": {}, "retry_after": s, "text": bool}
    DELETE /_sim/fault      remove all faults (?kind=K for one kind)
    POST   /_sim/external   {"action": "start"|"stop"|"exit"|"vanish"|"appear"} (the console),
                            "expire" (the contract ends now), or "created"|"frozen"|
                            "rebooting"|"unknown"|"offline": that actual_status until
                            "recover", a start or a stop (rebooting ends by itself after
                            load_delay); on the first instance, or ``"instance_id": N``
    POST   /_sim/contract   {"ends_at": epoch, "instance_id": N|null}: the contract's end_date
                            (a past one: now)
    GET    /_sim/market     every machine, and the offers an unfiltered search sees
    POST   /_sim/market     {"action": "take"|"free", "machine_id": M}: another renter takes
                            the GPU or gives it back; {"action": "withdraw"|"relist",
                            "offer_id": O}: the offer vanishes (create answers 404) or comes
                            back; {"action": "add", "machine": {...}}: a new machine
    GET    /_sim/files      ?instance_id=N: the files on an instance's disk
    PUT    /_sim/files      {"instance_id": N, "files": {path: text}}: write some
    GET    /_sim/requests   {"requests": [{method, path, query, json, status, time}], "count"}
                            (?method=, ?path=, ?server=llm); the key is never recorded
    DELETE /_sim/requests   empty the logs
    POST   /_sim/reset      initial state: the first instance alone, the first market, no
                            faults, empty logs
    POST   /_sim/timing     {"schedule_delay": s, ..., "copy_delay": s} for every instance,
                            for transitions from now on
    POST   /_sim/pause      {"seconds": s}: the API refuses connections, then comes back
    POST   /_sim/llm        {"token_delay_s": s, "serve_metrics": bool, "max_num_seqs": n,
                             "sticky_gauges": bool, "log_stats": bool}
    POST   /_sim/billing    {"factor": {"gpu": 1.5, ...}, "billing_read": false, "dph_base": x,
                            "storage_cost": y, "stopped_storage_factor": z,
                            "clip_to_range": bool}: bill (and answer charges) differently

  Billing (billing.py), as vast.ai bills: GPU (dph_base) per second while running or frozen,
  storage (storage_cost x disk_space / 720 $/h, ``stopped_storage_factor`` times that while the
  machine holds no GPU for the instance) per second while it exists and its host is online,
  bandwidth per byte of LLM traffic; the time since its creation (``Hardware.age_seconds``)
  billed in the initial state. Charge rows carry the whole contract by default; clipping them
  to the asked range is the other reading of an undocumented point.

Fault kinds (``Simulator.add_fault(kind, **options)`` or POST /_sim/fault):
    response               any status and body (``status`` required)
    rate_limit             429, JSON {"detail": ...} or ``text=True``; ``retry_after`` header;
                           on the charges endpoint its documented JSON and Retry-After: 1

Rate limits are on by default, as on vast.ai: a request sooner than GET 2 s / PUT 1 s after
the last accepted one for the same key and endpoint answers 429 with the plain-text body
``API requests too frequent: endpoint threshold=2.0`` and no Retry-After; the charges endpoint
has its own 1.0 s and JSON 429 (``Simulator(rate_limit={})`` or ``--rate-limit-get 0
--rate-limit-put 0`` turn them off).
    html                   an HTML proxy page instead of JSON, 502 (or ``status=200``)
    slow                   answer normally after ``delay`` seconds
    resources_unavailable  another renter takes the first instance's machine: a start
                           answers 200 success false and stays in scheduling until a stop
                           or until the fault is cleared (no ``count``)
    missing_billing        a start answers 400 missing_billing (until cleared by default)
The first four answer before auth, as a proxy would; ``count`` defaults to 1 for them.

Run standalone: ``python -m vastpanel.simulator --port 0 --api-key KEY --instance-id 123``
(``--no-sticky-gauges``, ``--clip-charges``, ``--contract-ends-at EPOCH``, ``--gpu-taken``).
"""

from .agent import AgentSettings
from .backend import LlmConfig
from .faults import KINDS as FAULT_KINDS
from .faults import Fault
from .hardware import Hardware
from .market import Machine
from .recipe import Recipe
from .runner import Simulator
from .timing import ManualClock, Timing

__all__ = [
    "AgentSettings",
    "FAULT_KINDS",
    "Fault",
    "Hardware",
    "LlmConfig",
    "Machine",
    "ManualClock",
    "Recipe",
    "Simulator",
    "Timing",
]
