"""The gateway's HTTP protocol under `serve --workers N`: uvicorn's own, with TCP_NODELAY on each connection.

With `--workers N` uvicorn binds the listening socket itself (`socket.socket(family)`, protocol number 0), and
asyncio only sets TCP_NODELAY on sockets whose protocol number is IPPROTO_TCP. Without it, a response's
headers and body (two writes) meet Nagle's algorithm and the client's delayed ACK: ~40 ms per request on a
kept-alive connection. One process (`loop.create_server(host, port)`) already gets TCP_NODELAY.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

try:  # uvicorn's "auto" choice: httptools when installed, else h11
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # pragma: no cover
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Base  # type: ignore[assignment]


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):  # a socket closed meanwhile
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class NoDelayHttpProtocol(_Base):  # type: ignore[misc,valid-type]
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        set_nodelay(transport)
        super().connection_made(transport)


HTTP_PROTOCOL = f"{__name__}:NoDelayHttpProtocol"
