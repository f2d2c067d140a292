"""Traffic probes between namespaces for the gateway's demo scene, tests and benchmarks: a TCP server that
answers with the peer address it sees (so the NAT is visible), and connections from a namespace."""

from __future__ import annotations

import socket
import threading
import time

from nvfabric.lab.daemons import in_ns


class Server:
    """A TCP server in a namespace: answers each connection with the peer's address and port, then echoes
    lines until the peer closes (so a flow can be kept established across a change)."""

    def __init__(self, ns: str, address: tuple[str, int], banner: str = "") -> None:
        self.sock: socket.socket = in_ns(ns, lambda: socket.create_server(address, family=_family(address[0]),
                                                                          reuse_port=False))
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
    """Open a TCP connection from namespace ns (IPv4 or IPv6, by dst); return it and the server's first line
    (`ADDRESS:PORT` as the server saw us: split an IPv6 one with rsplit(":", 1))."""
    def go() -> socket.socket:
        s = socket.socket(_family(dst[0]))
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


def connect_retrying(ns: str, dst: tuple[str, int], src: tuple[str, int] | None = None,
                     tries: int = 5) -> tuple[socket.socket, str]:
    """`connect`, tried up to `tries` times (a new flow's first packets may be lost while a path settles);
    ConnectionError naming every attempt's error when none got through."""
    errors = []
    for _ in range(tries):
        try:
            return connect(ns, dst, src)
        except OSError as exc:
            errors.append(repr(exc))
    raise ConnectionError(f"{ns} cannot reach {dst}: {errors}")


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


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
