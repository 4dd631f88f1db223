"""The HTTP mechanics under gptkit's routes: bounded request bodies, JSON replies, errors in OpenAI's shape.

A request body is read only with a `Content-Length` of at most `MAX_BODY_BYTES`
(411 when chunked, 413 past the limit, also before the client sends it when it
asks with `Expect: 100-continue`: the `100 Continue` goes out only once the body
is read). Replies are JSON as `json.dumps` writes it; errors are `ApiError`'s
`{"error": {...}}`, a 429 with `Retry-After`. Which paths exist and what they
answer is `gptkit.serving.server`'s business; how a reply made on a worker thread
reaches the client is `gptkit.serving.exchange`'s.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gptkit.serving.openai_schema import ApiError

MAX_BODY_BYTES = 64 * 1024
# An oversized body up to this is read past and dropped by the HTTP layer, keeping the connection;
# a larger one is not worth receiving: the reply closes the connection instead.
DRAIN_BYTES = 1024 * 1024


class ClientGone(Exception):
    """The client closed the connection; nothing more can be sent."""


class RefusedBody(Exception):
    """A request body that is not read: `error` answers it, `close` says the connection cannot be reused."""

    def __init__(self, error: ApiError, *, close: bool) -> None:
        super().__init__(error.message)
        self.error, self.close = error, close


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def error_headers(err: ApiError, *, close: bool = False) -> dict[str, str]:
    """What an error reply says besides its body: when to retry a 429, and that the connection ends."""
    headers = {"Retry-After": "1"} if err.status == 429 else {}
    if close:  # said outright, so that the client does not try to reuse the connection
        headers["Connection"] = "close"
    return headers


def json_reply(status: int, obj: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(json_bytes(obj), status, headers=headers, media_type="application/json")


def error_reply(err: ApiError, *, close: bool = False) -> Response:
    return json_reply(err.status, err.body(), error_headers(err, close=close))


async def read_body(request: Request) -> bytes:
    """The request's body, or RefusedBody: 411 if chunked, 413 past MAX_BODY_BYTES.

    The HTTP layer has already refused a malformed Content-Length (400) and keeps
    a body to its declared length, so the length read here is a whole number.
    """
    if "chunked" in request.headers.get("transfer-encoding", "").lower():
        raise RefusedBody(ApiError(411, "send the body with a Content-Length, not chunked"), close=True)
    length = int(request.headers.get("content-length", "0"))
    if length > MAX_BODY_BYTES:
        too_large = ApiError(413, f"the request body is {length} bytes; at most {MAX_BODY_BYTES} are accepted")
        # A client waiting for `100 Continue` never sends the body: there is nothing to drop before the next request.
        waiting = request.headers.get("expect", "").lower() == "100-continue"
        raise RefusedBody(too_large, close=waiting or length > DRAIN_BYTES)
    return await request.body()


def is_loopback(host: str) -> bool:
    """Whether `host` (an address, or "localhost") is reachable from this machine only."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
