"""A gateway's child daemons (conntrackd, charon): where each keeps its runtime files, a directory of its own
under RUN_ROOT, one per gateway, so two gateways of a lab (or a gateway and a test's sites) on one machine
never share a socket or a lock; and how an owner that drops the gateway ends them."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Self

RUN_ROOT = Path("/run/nvfabric")
UNIX_PATH_MAX = 107  # sun_path's 108 bytes, less the terminating NUL


def daemon_directory(prefix: str, parts: Iterable[str], socket: str) -> Path:
    """RUN_ROOT/<prefix>-<parts...>; a digest of that name instead when the daemon's UNIX socket (`socket`, a
    file name in it) would not fit sun_path (a long namespace name)."""
    name = "-".join([prefix, *parts])
    if len(str(RUN_ROOT / name / socket)) > UNIX_PATH_MAX:
        name = f"{prefix}-" + hashlib.sha256(name.encode()).hexdigest()[:16]
    return RUN_ROOT / name


@dataclass(frozen=True)
class DaemonFiles:
    """A daemon's configuration file and UNIX socket, in its directory; a subclass names the two files."""

    directory: Path
    CONFIG: ClassVar[str] = ""
    SOCKET: ClassVar[str] = ""

    @property
    def config(self) -> Path:
        return self.directory / self.CONFIG

    @property
    def socket(self) -> Path:
        return self.directory / self.SOCKET

    @classmethod
    def under(cls, prefix: str, parts: Iterable[str]) -> Self:
        return cls(daemon_directory(prefix, parts, cls.SOCKET))

    def remove(self) -> None:
        """The files and the directory, once the daemon has stopped: nothing left behind per namespace a lab or a
        test used (the configuration is written again at each start)."""
        for path in (self.config, self.socket):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.directory.rmdir()


def kill(proc: asyncio.subprocess.Process | None) -> None:
    """From any thread: the child must not outlive an owner that drops the gateway without stopping it."""
    if proc is not None and proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
