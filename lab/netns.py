"""Network namespaces, veth pairs and processes inside them, through iproute2.

The lab builds a handful of objects once per run, so it drives `ip` rather than netlink: the commands
are what an operator would type to reproduce a lab by hand, and their errors read the same.
"""

from __future__ import annotations

import os
import re
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


def ip_batch(lines: list[str], namespace: str | None = None, where: str = "host") -> None:
    """Run iproute2 commands (without the leading `ip`) in one process; a failure names its line.

    Under the VM's emulated CPU every process start costs a few hundred milliseconds, so the lab's
    dozens of `ip` commands go through one `ip -batch` per namespace instead of one process each.
    """
    if not lines:
        return
    argv = ["ip"] + (["-n", namespace] if namespace else []) + ["-batch", "-"]
    proc = subprocess.run(argv, input="\n".join(lines) + "\n", stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        # iproute2 stops at the first failing line and says "Command failed -:N".
        failed = re.search(r"Command failed -:(\d+)", proc.stdout)
        line = lines[int(failed.group(1)) - 1] if failed else " ; ".join(lines)
        output = re.sub(r"Command failed -:\d+\n?", "", proc.stdout)
        raise CommandFailed(["ip", *line.split()], proc.returncode, output, where)


def batchable(argv: tuple[str, ...] | list[str]) -> bool:
    """An `ip` command that can go into `ip -batch` unchanged: no global options, no quoting needed."""
    return (
        len(argv) > 1 and argv[0] == "ip" and not argv[1].startswith("-")
        and all(a and not any(c.isspace() or c in "\"'\\#" for c in a) for a in argv)
    )


def create(namespace: str) -> None:
    """A namespace with its loopback up (tests that build their own namespaces use this)."""
    run(["ip", "netns", "add", namespace])
    run(["ip", "-n", namespace, "link", "set", "lo", "up"])


def veth_line(ns_a: str, if_a: str, ns_b: str, if_b: str) -> str:
    # Created directly inside both namespaces: no transient name in the root namespace that could
    # collide with the host's own interfaces or another lab's.
    return f"link add {if_a} netns {ns_a} type veth peer name {if_b} netns {ns_b}"


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
    # A zombie has already exited; only its parent can reap it, so it counts as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
