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
        # close() alone leaves the thread blocked in accept() holding the listening socket (the port still
        # taken); shutdown wakes it
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
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


class Exchange:
    """A TCP connection kept open through a change (a gateway failing over): in its own thread, a numbered line
    sent every `interval` s and its echo awaited (an echoing `Server` at the other end), on the SAME socket
    all along: it never reconnects, so an exchange after the change proves the connection itself survived.

    `times`: the wall clock (time.time()) of each completed exchange; `error`: why the socket failed (reset,
    closed, a wrong echo), None while it works. A lost segment is TCP's business: the echo is awaited
    however long retransmission takes (the gap shows as a stall)."""

    def __init__(self, sock: socket.socket, interval: float = 0.1) -> None:
        self.sock = sock
        self.interval = interval
        self.times: list[float] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.2)  # wakes up to notice close(); the echo itself may take longer
        pending = b""
        n = 0
        while not self._stop.is_set():
            n += 1
            sent = time.monotonic()
            try:
                self.sock.sendall(f"{n}\n".encode())
                while b"\n" not in pending:
                    if self._stop.is_set():
                        return
                    try:
                        chunk = self.sock.recv(100)
                    except TimeoutError:
                        continue
                    if not chunk:
                        self.error = "closed by the other end"
                        return
                    pending += chunk
            except OSError as exc:
                self.error = repr(exc)
                return
            line, pending = pending.split(b"\n", 1)
            if line != str(n).encode():
                self.error = f"echo {line!r} for {n}"
                return
            self.times.append(time.time())
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - sent)))

    def since(self, t: float) -> int:
        """How many exchanges completed after wall-clock time t."""
        return sum(1 for x in list(self.times) if x > t)

    def longest_stall(self, t: float) -> float:
        """The longest time without a completed exchange from the last one before t on (until the last one;
        inf when none completed after t)."""
        times = list(self.times)
        before = [x for x in times if x <= t]
        after = [x for x in times if x > t]
        if not after:
            return float("inf")
        window = [*(before[-1:] or [t]), *after]
        return max(b - a for a, b in zip(window, window[1:], strict=False))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
