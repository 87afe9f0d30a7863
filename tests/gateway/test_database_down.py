"""PostgreSQL unreachable: the gateway answers 503 with Retry-After (never 500) and writes no partial rows.

The app reaches the real PostgreSQL through a local TCP proxy that the test cuts and restores."""

from __future__ import annotations

import contextlib
import socket
import threading

import pytest
from sqlalchemy import func, select

from audit.db import session_scope
from audit.models import Job
from tests.gateway.helpers import free_port, new_key

pytestmark = pytest.mark.postgres


class Proxy:
    """Forwards 127.0.0.1:<port> to PostgreSQL until `cut()`, which also drops every open connection."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5432)) -> None:
        self.target = target
        self.port = free_port()
        self.sockets: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.lock = threading.Lock()

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        if self.listener is not None:
            with contextlib.suppress(OSError):
                self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked in another thread
            self.listener.close()
            self.listener = None
        with self.lock:
            for s in self.sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self.sockets = []


def test_postgres_unreachable_gives_503_and_no_partial_rows(make_client, module_pg_url) -> None:
    proxy = Proxy()
    proxy.open()
    name = module_pg_url.rsplit("/", 1)[1]
    client = make_client(database_url=f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/{name}")
    tenant, auth = new_key(module_pg_url)
    body = {"prompt": "a red circle"}

    def count() -> int:
        with session_scope(module_pg_url) as session:  # the direct connection, not the proxy
            return session.scalar(select(func.count()).select_from(Job).where(Job.tenant == tenant))

    try:
        first = client.post("/v1/jobs", json=body, headers=auth)
        assert first.status_code == 202
        proxy.cut()
        for method, path in [
            ("post", "/v1/jobs"),
            ("get", f"/v1/jobs/{first.json()['id']}"),
            ("get", "/v1/jobs"),
            ("post", "/v1/score"),
        ]:
            kwargs = {"json": body if path == "/v1/jobs" else {"prompts": ["a"]}} if method == "post" else {}
            response = getattr(client, method)(path, headers=auth, **kwargs)
            assert response.status_code == 503, (path, response.status_code, response.text)
            assert int(response.headers["Retry-After"]) > 0
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"].startswith("unavailable")
        assert client.get("/healthz").status_code == 200
        assert count() == 1
        proxy.open()
        assert client.post("/v1/jobs", json=body, headers=auth).status_code == 202
        assert count() == 2
    finally:
        proxy.cut()
