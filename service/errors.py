"""The service's error answers: a 503 when overloaded, and BentoML's request-validation errors
rewritten to match the schema it publishes, and say what is wrong.

BentoML 1.4 answers a request that fails pydantic validation with a 400 whose
`detail` is pydantic's list of errors, while its own OpenAPI schema declares
`detail` a string (schemathesis found this), and whose `error` says only
"1 validation error for Input". This ASGI middleware rewrites such a body to
`{"error": "samples: Input should be greater than or equal to 1", "detail": <same>}`:
the field and the problem, as a string. Other responses pass through untouched.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse

from service.limits import App, Message, Receive, Scope, Send


def overloaded(max_latency_ms: int) -> JSONResponse:
    """503 with a reason and a hint, when adaptive batching cannot meet the latency budget."""
    error = (
        "overloaded: the service cannot answer within the latency budget of "
        f"{max_latency_ms} ms (UQSERVE_MAX_LATENCY_MS); retry later"
    )
    return JSONResponse({"error": error}, status_code=503, headers={"Retry-After": "1"})


def describe(errors: list[dict[str, Any]]) -> str:
    """pydantic's error list -> 'field.path: message; ...'."""
    parts = []
    for error in errors:
        location = ".".join(str(part) for part in error.get("loc", ())) or "request"
        parts.append(f"{location}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


def rewrite(body: bytes) -> bytes | None:
    """The rewritten 400 body, or None when it is not a validation-error list."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("detail"), list):
        return None
    message = describe([e for e in payload["detail"] if isinstance(e, dict)])
    return json.dumps({"error": message, "detail": message}).encode()


class ValidationErrors:
    """ASGI middleware: string-valued, field-naming bodies for 400 validation errors."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: list[Message] = []

        async def send_rewritten(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 400:
                held.append(message)  # wait for the body
                return
            if held and message["type"] == "http.response.body":
                held.append(message)
                if message.get("more_body"):
                    return
                for part in _rewritten(held):
                    await send(part)
                held.clear()
                return
            await send(message)

        await self.app(scope, receive, send_rewritten)


def _rewritten(held: list[Message]) -> list[Message]:
    """The held 400 start and body messages, rewritten when the body is a validation error."""
    start, body = held[0], b"".join(m.get("body", b"") for m in held[1:])
    new = rewrite(body)
    if new is None:
        return [start, {"type": "http.response.body", "body": body}]
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(new)).encode()))
    return [{**start, "headers": headers}, {"type": "http.response.body", "body": new}]
