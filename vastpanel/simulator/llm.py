"""The LLM stack inside the simulated instance: vLLM-style /health and an OpenAI-style API."""

from __future__ import annotations

import hmac
import time
import uuid

from flask import Flask, Response, current_app, g, json, request

from .backend import Backend


def create_llm_app(backend: Backend) -> Flask:
    """Return the WSGI app the instance's mapped ports lead to."""
    app = Flask(__name__)
    app.extensions["vast_sim"] = backend
    app.before_request(_only_when_up)
    app.after_request(_log_request)
    app.add_url_rule("/health", view_func=health)
    app.add_url_rule("/v1/models", view_func=list_models)
    app.add_url_rule("/v1/chat/completions", view_func=chat_completion, methods=["POST"])
    return app


def _backend() -> Backend:
    return current_app.extensions["vast_sim"]


def _json(status: int, body) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


def openai_error(status: int, message: str, kind: str) -> Response:
    """Return an error in the OpenAI shape."""
    return _json(status, {"error": {"message": message, "type": kind, "param": None, "code": None}})


def _only_when_up():
    """Answer 502 as the host's proxy does while the instance or the model is not up."""
    backend = _backend()
    g.arrived_at = backend.clock()
    inst = backend.instance
    with inst.lock:
        running = not inst.vanished and inst.is_running(g.arrived_at)
        warm = running and inst.is_warm(g.arrived_at)
    if not running:
        return Response("502 Bad Gateway: instance not running\n", status=502)
    if not warm:
        return Response("502 Bad Gateway: model server is still loading\n", status=502)
    key = backend.llm.api_key
    if key and request.path != "/health":
        sent = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(sent.encode(), key.encode()):
            return openai_error(401, "Unauthorized", "invalid_request_error")
    return None


def _log_request(response: Response) -> Response:
    if request.path.startswith("/v1/") and not response.is_streamed:
        # LLM traffic is billed as bandwidth: the request in, the answer out.
        _backend().add_bandwidth(request.content_length or 0, response.content_length or 0)
    _backend().record(
        {
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "time": g.get("arrived_at"),
        },
        llm=True,
    )
    return response


def health():
    """Answer 200 with an empty body once the model is warm, as vLLM does."""
    return Response("", status=200)


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
    """Answer any valid chat request with the fixed completion."""
    llm = _backend().llm
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return openai_error(400, "'messages' is a required list", "invalid_request_error")
    if body.get("model", llm.model) != llm.model:
        return openai_error(404, f"The model `{body['model']}` does not exist.", "NotFoundError")
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body["messages"] if m)
    completion_tokens = len(llm.completion.split())
    completion_id = "chatcmpl-" + uuid.uuid4().hex
    created = int(time.time())
    if body.get("stream"):
        return Response(_stream(completion_id, created, llm), mimetype="text/event-stream")
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
                    "message": {"role": "assistant", "content": llm.completion},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        },
    )


def _stream(completion_id: str, created: int, llm):
    """Yield the completion as server-sent events: one content chunk, a stop chunk, [DONE]."""
    base = {"id": completion_id, "object": "chat.completion.chunk", "created": created}
    for delta, finish in (({"role": "assistant", "content": llm.completion}, None), ({}, "stop")):
        chunk = {
            **base,
            "model": llm.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"
