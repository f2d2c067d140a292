"""Helpers of the gateway tests (host phase and kernel phase): run code in a namespace, the Gateway on its own
loop in a namespace thread, a TCP server that reports the peer it sees, connections from a namespace."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from gateway.config import GatewayConfig
from gateway.gateway import Gateway
from hostagent.thread import enter_namespace

T = TypeVar("T")


def in_ns(ns: str, fn: Callable[[], T], timeout: float = 15.0) -> T:
    """Run fn in a fresh thread inside namespace ns (setns is per thread), wait for its result."""
    out: Future[T] = Future()

    def main() -> None:
        try:
            enter_namespace(ns)
            out.set_result(fn())
        except BaseException as exc:  # handed to the caller
            out.set_exception(exc)

    threading.Thread(target=main, daemon=True).start()
    return out.result(timeout)


class GatewayThread:
    """The gateway on its own loop in a thread inside the gateway namespace (as the daemon runs)."""

    def __init__(self, config: GatewayConfig, ns: str) -> None:
        self.ns = ns
        self.gateway = Gateway(config)
        self.loop = asyncio.new_event_loop()
        ready: Future[None] = Future()

        def main() -> None:
            enter_namespace(ns)
            asyncio.set_event_loop(self.loop)
            ready.set_result(None)
            self.loop.run_forever()

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()
        ready.result(5)

    def call(self, fn: Callable[[Gateway], Any], timeout: float = 20.0) -> Any:
        async def go() -> Any:
            return await fn(self.gateway)
        return asyncio.run_coroutine_threadsafe(go(), self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# ---------------------------------------------------------------------- traffic helpers


class Server:
    """A TCP server in a namespace: answers each connection with the peer's address and port, then echoes
    lines until the peer closes (so a flow can be kept established across a change)."""

    def __init__(self, ns: str, address: tuple[str, int], banner: str = "") -> None:
        self.sock: socket.socket = in_ns(ns, lambda: socket.create_server(address, reuse_port=False))
        self.banner = banner
        self.seen: list[tuple[str, int]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.seen.append(peer)
            threading.Thread(target=self._echo, args=(conn, peer), daemon=True).start()

    def _echo(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        with conn:
            conn.sendall(f"{self.banner}{peer[0]}:{peer[1]}\n".encode())
            while data := conn.recv(100):
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


def connect(ns: str, dst: tuple[str, int], src: tuple[str, int] | None = None) -> tuple[socket.socket, str]:
    """Open a TCP connection from namespace ns; return it and the server's first line."""
    def go() -> socket.socket:
        s = socket.socket()
        try:
            s.settimeout(5)
            if src is not None:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(src)
            s.connect(dst)
        except BaseException:
            s.close()  # a half-open socket would keep the source port (EADDRNOTAVAIL on the retry)
            raise
        return s
    s = in_ns(ns, go)
    return s, _line(s)


def _line(s: socket.socket) -> str:
    data = b""
    deadline = time.monotonic() + 5
    while not data.endswith(b"\n") and time.monotonic() < deadline:
        chunk = s.recv(100)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()


def echo(s: socket.socket, text: str) -> str:
    s.sendall(text.encode() + b"\n")
    return _line(s)


