"""`serve --workers N`: uvicorn's own listening socket (protocol number 0) gets no TCP_NODELAY from asyncio;
the gateway's protocol sets it, or each kept-alive request waits for Nagle + delayed ACK (~40 ms)."""

from __future__ import annotations

import socket
from types import SimpleNamespace

from uvicorn.importer import import_from_string

from gateway.serving import HTTP_PROTOCOL, NoDelayHttpProtocol, set_nodelay


def test_the_protocol_sets_tcp_nodelay_on_a_socket_like_uvicorns() -> None:
    with socket.socket(socket.AF_INET) as listener:  # as uvicorn's Config.bind_socket makes it
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with socket.create_connection(listener.getsockname()) as client:
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
                transport = SimpleNamespace(get_extra_info={"socket": accepted}.get)
                set_nodelay(transport)
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
                assert client.fileno() >= 0


def test_uvicorn_can_import_the_protocol() -> None:
    assert import_from_string(HTTP_PROTOCOL) is NoDelayHttpProtocol
