"""systemd's readiness protocol (sd_notify): a datagram of `NAME=value` lines to the socket in $NOTIFY_SOCKET.

Written here rather than taken from a library: the protocol is one datagram, the maintained binding
(systemd-python) needs libsystemd headers to build, and the pure-Python one has not changed since 2017.
Without $NOTIFY_SOCKET (run by hand, in the lab, in tests that do not ask for it) every call is a no-op,
and a send that fails is logged once and never stops the daemon: readiness is a courtesy to the manager,
the daemon works without it.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)

ENV = "NOTIFY_SOCKET"


def _address(value: str) -> str | bytes:
    # '@name' is a Linux abstract socket: its real name starts with a NUL byte
    return b"\0" + value[1:].encode() if value.startswith("@") else value


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares MONOTONIC_USEC= with on a reload."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends state lines to the service manager, if there is one.

    Made from the environment, it takes $NOTIFY_SOCKET out of it (as sd_notify's unset_environment): the
    daemon's children must not speak for it (conntrackd, the gateway's child, would say READY=1 itself)."""

    def __init__(self, socket_path: str | None = None) -> None:
        self.path = os.environ.pop(ENV, None) if socket_path is None else socket_path
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self.path)

    def send(self, *lines: str) -> bool:
        """One datagram of `lines` (each `NAME=value`); True when sent, False with no manager or on error."""
        if not self.path:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(_address(self.path))
                sock.sendall("\n".join(lines).encode())
        except OSError as err:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify the service manager at %s=%s: %s", ENV, self.path, err)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *self._status(status))

    def reloading(self, status: str | None = None) -> bool:
        # systemd 253+ wants MONOTONIC_USEC with RELOADING=1 (Type=notify-reload); 252 ignores it
        return self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", *self._status(status))

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *self._status(status))

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    @staticmethod
    def _status(status: str | None) -> tuple[str, ...]:
        return (f"STATUS={status}",) if status else ()
