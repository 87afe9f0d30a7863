"""How the gateway is served: uvicorn's own HTTP protocol with TCP_NODELAY and a header read timeout, the
options `emoe-gate serve` passes to uvicorn, and the request body cap (`BodyLimit`).

TCP_NODELAY: with `--workers N` uvicorn binds the listening socket itself (`socket.socket(family)`, protocol
number 0), and asyncio only sets TCP_NODELAY on sockets whose protocol number is IPPROTO_TCP. Without it, a
response's headers and body (two writes) meet Nagle's algorithm and the client's delayed ACK:
~40 ms per request on a kept-alive connection.

Header timeout: uvicorn arms its keep-alive timer only after a response, so a client that connects and sends
its headers a byte at a time holds the connection for as long as it likes. The protocol gives every request
`header_timeout_s` from its connection (or from the first byte of a kept-alive request) to the end of its
headers; then it answers 408 and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from typing import Any

from starlette.exceptions import HTTPException

from settings import Settings, get_settings

try:  # uvicorn's "auto" choice: httptools when installed, else h11
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # pragma: no cover
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Base  # type: ignore[assignment]

TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):  # a socket closed meanwhile
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class NoDelayHttpProtocol(_Base):  # type: ignore[misc,valid-type]
    """uvicorn's protocol with TCP_NODELAY and a deadline for each request's headers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = get_settings().header_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        set_nodelay(transport)
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        cycle = getattr(self, "cycle", None)
        if self.transport.is_closing() or (cycle is not None and not cycle.response_complete):
            return  # a request is being answered: its headers came in time
        self.transport.write(TIMEOUT_RESPONSE)
        self.transport.close()


HTTP_PROTOCOL = f"{__name__}:NoDelayHttpProtocol"


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """What `emoe-gate serve` passes to `uvicorn.run`, whatever the number of processes."""
    return {"http": HTTP_PROTOCOL, "timeout_keep_alive": 5, "h11_max_incomplete_event_size": 16 * 1024}


# --- the request body cap -----------------------------------------------------------------------------------


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a body passes the cap: an HTTPException, so that the app's body parsing lets
    it through and its handlers answer 413."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the request body is larger than this server takes ({max_bytes} bytes)")


class BodyLimit:
    """ASGI middleware: a body longer than `max_bytes` gets 413 before it is read in full (at once when its
    Content-Length says so, else as soon as the bytes received pass the cap)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(send)
            return
        received = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({"detail": BodyTooLarge(self.max_bytes).detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
