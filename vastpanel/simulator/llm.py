"""The LLM stack inside a simulated instance: vLLM-style /health, /metrics and OpenAI API.

Every completion holds a batch slot while it generates, one token per ``token_delay_s``, so
vLLM's gauges (running, waiting) and counters (requests, prompt and generation tokens) in
/metrics move with the requests really served. ``max_tokens`` sets a generation's length (the
fixed completion's words, repeated); a streamed one sends each token as it is made.
"""

from __future__ import annotations

import hmac
import time
import uuid

from flask import Flask, Response, current_app, g, json, request

from .backend import Backend
from .instance import SimInstance
from .vllm_metrics import CONTENT_TYPE

MAX_TOKENS_LIMIT = 100_000


def create_llm_app(backend: Backend, instance_id: int) -> Flask:
    """Return the WSGI app an instance's mapped ports lead to."""
    app = Flask(__name__)
    app.extensions["vast_sim"] = backend
    app.extensions["vast_sim_instance"] = instance_id
    app.before_request(_only_when_up)
    app.after_request(_log_request)
    app.add_url_rule("/health", view_func=health)
    app.add_url_rule("/metrics", view_func=metrics)
    app.add_url_rule("/v1/models", view_func=list_models)
    app.add_url_rule("/v1/chat/completions", view_func=chat_completion, methods=["POST"])
    return app


def _backend() -> Backend:
    return current_app.extensions["vast_sim"]


def _instance() -> SimInstance:
    return _backend().instances[current_app.extensions["vast_sim_instance"]]


def _json(status: int, body) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


def openai_error(status: int, message: str, kind: str) -> Response:
    """Return an error in the OpenAI shape."""
    return _json(status, {"error": {"message": message, "type": kind, "param": None, "code": None}})


def _only_when_up():
    """Answer 502 as the host's proxy does while the instance or the model is not up."""
    backend = _backend()
    g.arrived_at = backend.clock()
    inst = _instance()
    with inst.lock:
        running = inst.is_running(g.arrived_at)
        warm = running and inst.is_warm(g.arrived_at)
        boot = inst.running_at
    if not running:
        return Response("502 Bad Gateway: instance not running\n", status=502)
    if not warm:
        return Response("502 Bad Gateway: model server is still loading\n", status=502)
    inst.metrics.note_boot(boot)  # a new boot is a restarted vLLM: counters from zero
    # vLLM's --api-key guards /v1 only; a /metrics token is what nginx asks in front of it.
    key = backend.llm.metrics_token if request.path == "/metrics" else backend.llm.api_key
    if key and request.path != "/health":
        sent = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(sent.encode(), key.encode()):
            return openai_error(401, "Unauthorized", "invalid_request_error")
    return None


def _log_request(response: Response) -> Response:
    if request.path.startswith("/v1/") and not response.is_streamed:
        # LLM traffic is billed as bandwidth: the request in, the answer out.
        _backend().add_bandwidth(
            _instance(), request.content_length or 0, response.content_length or 0
        )
    _backend().log.record(
        {
            "instance_id": _instance().id,
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "time": g.get("arrived_at"),
        },
        llm=True,
    )
    return response


# What vLLM's /metrics serves with --disable-log-stats: the process's metrics, no vllm: sample.
PROCESS_METRICS_ONLY = (
    "# HELP python_gc_objects_collected_total Objects collected during gc\n"
    "# TYPE python_gc_objects_collected_total counter\n"
    'python_gc_objects_collected_total{generation="0"} 12931.0\n'
    "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
    "# TYPE process_resident_memory_bytes gauge\n"
    "process_resident_memory_bytes 2.1474836e+09\n"
)


def health():
    """Answer 200 with an empty body once the model is warm, as vLLM does."""
    return Response("", status=200)


def metrics():
    """Serve vLLM's Prometheus metrics (404 when the stack is set not to)."""
    backend = _backend()
    if not backend.llm.serve_metrics:
        return Response("404 Not Found\n", status=404, mimetype="text/plain")
    if not backend.llm.log_stats:
        return Response(PROCESS_METRICS_ONLY, status=200, content_type=CONTENT_TYPE)
    return Response(_instance().metrics.exposition(), status=200, content_type=CONTENT_TYPE)


def list_models():
    """List the one served model."""
    model = _backend().llm.model
    return _json(
        200,
        {
            "object": "list",
            "data": [{"id": model, "object": "model", "created": 1700000000, "owned_by": "vllm"}],
        },
    )


def chat_completion():
    """Answer a valid chat request with the fixed completion, one token per token_delay_s."""
    backend = _backend()
    llm = backend.llm
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return openai_error(400, "'messages' is a required list", "invalid_request_error")
    if body.get("model", llm.model) != llm.model:
        return openai_error(404, f"The model `{body['model']}` does not exist.", "NotFoundError")
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (
        not isinstance(max_tokens, int)
        or isinstance(max_tokens, bool)
        or not 1 <= max_tokens <= MAX_TOKENS_LIMIT
    ):
        message = f"max_tokens must be a whole number from 1 to {MAX_TOKENS_LIMIT}"
        return openai_error(400, message, "invalid_request_error")
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body["messages"] if m)
    words = llm.completion.split()
    count = max_tokens or len(words)
    tokens = [words[i % len(words)] for i in range(count)]
    reason = "stop" if count == len(words) else "length"
    completion_id = "chatcmpl-" + uuid.uuid4().hex
    created = int(time.time())
    if body.get("stream"):
        chunks = _stream(
            backend, _instance(), prompt_tokens, tokens, reason, completion_id, created
        )
        return Response(chunks, mimetype="text/event-stream")
    content = " ".join(_generate(backend, _instance(), prompt_tokens, tokens, reason))
    return _json(
        200,
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": llm.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(tokens),
                "total_tokens": prompt_tokens + len(tokens),
            },
        },
    )


def _generate(backend: Backend, inst: SimInstance, prompt_tokens: int, tokens, reason: str):
    """Yield the tokens one per token_delay_s, holding a batch slot counted in the metrics."""
    with inst.metrics.request(prompt_tokens, backend.clock, backend.closing) as generation:
        for token in tokens:
            backend.pause_for(backend.llm.token_delay_s)
            if backend.closing.is_set():
                return  # the simulator is stopping: an aborted request
            if not _instance_up(backend, inst):
                # The machine went away under the model: the connection breaks mid-answer.
                raise InstanceGone("the instance stopped or vanished during a generation")
            generation.token()
            yield token
        generation.finish(reason)


class InstanceGone(ConnectionAbortedError):
    """The simulated instance stopped or vanished while a completion was being generated."""


def _instance_up(backend: Backend, inst: SimInstance) -> bool:
    """Tell whether the instance still runs (an LLM on a gone machine cannot answer)."""
    with inst.lock:
        return inst.is_running(backend.clock())


def _stream(backend: Backend, inst, prompt_tokens, tokens, reason, completion_id, created):
    """Yield server-sent events: each token as it is made, a finish chunk, then [DONE]."""
    base = {"id": completion_id, "object": "chat.completion.chunk", "created": created}
    model = backend.llm.model

    def chunk(delta: dict, finish: str | None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return f"data: {json.dumps({**base, 'model': model, 'choices': [choice]})}\n\n"

    yield chunk({"role": "assistant", "content": ""}, None)
    generation = _generate(backend, inst, prompt_tokens, tokens, reason)
    try:
        for i, token in enumerate(generation):
            yield chunk({"content": token if i == 0 else " " + token}, None)
    finally:
        # A client that closes the connection closes this stream: the generation it was
        # waiting for is aborted at once, as vLLM aborts a request whose client went away.
        generation.close()
    yield chunk({}, reason)
    yield "data: [DONE]\n\n"
