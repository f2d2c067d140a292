"""Network namespaces, veth pairs and processes inside them, through iproute2.

The lab builds a handful of objects once per run, so it drives `ip` rather than netlink: the commands
are what an operator would type to reproduce a lab by hand, and their errors read the same.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

NETNS_DIR = Path("/run/netns")


class CommandFailed(RuntimeError):
    """A command run for the lab failed; carries the command, where it ran and what it printed."""

    def __init__(self, argv: list[str] | tuple[str, ...], returncode: int, output: str, where: str = "host") -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.output = output
        self.where = where
        shown = " ".join(self.argv)
        super().__init__(f"{where}: `{shown}` exited {returncode}: {output.strip() or '(no output)'}")


@dataclass(frozen=True)
class Result:
    returncode: int
    output: str  # stdout and stderr interleaved, as an operator would see them


def run(argv: list[str] | tuple[str, ...], *, check: bool = True, where: str = "host", timeout: float = 120) -> Result:
    try:
        proc = subprocess.run(
            list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
        )
    except FileNotFoundError:
        raise CommandFailed(argv, 127, f"{argv[0]}: command not found", where) from None
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        raise CommandFailed(argv, -1, f"timed out after {timeout:.0f} s\n{out}", where) from None
    if check and proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, proc.stdout, where)
    return Result(proc.returncode, proc.stdout)


def in_netns(namespace: str, argv: list[str] | tuple[str, ...]) -> list[str]:
    return ["ip", "netns", "exec", namespace, *argv]


def exists(namespace: str) -> bool:
    return (NETNS_DIR / namespace).exists()


def list_namespaces() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def create(namespace: str) -> None:
    run(["ip", "netns", "add", namespace])
    run(["ip", "-n", namespace, "link", "set", "lo", "up"])


def add_veth(ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
    # Created directly inside both namespaces: no transient name in the root namespace that could
    # collide with the host's own interfaces or another lab's.
    run(["ip", "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b, "netns", ns_b])
    run(["ip", "-n", ns_a, "link", "set", if_a, "up"])
    run(["ip", "-n", ns_b, "link", "set", if_b, "up"])


def pids(namespace: str) -> list[int]:
    result = run(["ip", "netns", "pids", namespace], check=False)
    return [int(p) for p in result.output.split() if p.isdigit()]


def destroy(namespace: str, grace: float = 2.0) -> None:
    """Stop every process in the namespace, then delete it; a missing namespace is not an error."""
    if not exists(namespace):
        return
    victims = [p for p in pids(namespace) if p != os.getpid()]
    _signal_all(victims, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while victims and time.monotonic() < deadline:
        victims = [p for p in victims if _alive(p)]
        if victims:
            time.sleep(0.05)
    _signal_all(victims, signal.SIGKILL)
    run(["ip", "netns", "del", namespace], check=False)
    if exists(namespace):
        # `ip netns del` fails when the mount point is busy; unmounting lazily and removing the file
        # is what it would have done.
        run(["umount", "-l", str(NETNS_DIR / namespace)], check=False)
        (NETNS_DIR / namespace).unlink(missing_ok=True)


def _signal_all(victims: list[int], sig: int) -> None:
    for pid in victims:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child still answers kill(0); reap it if it is ours.
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return True
