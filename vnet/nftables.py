"""The project's one nftables talker: one atomic transaction per change (nft's JSON, or its own language where
the JSON cannot say it), read back as JSON; through libnftables in this process when it loads, else through
`nft -j -f -`.

The tables are built by their owners: `inet nvfabric` (vnet/decap.py: the GRE source filter and the
decapsulation checks), `inet nvfabric-vrf` (vnet/vrfmark.py), port security's (vnet/portsecurity.py), the
gateway's NAT table (gateway/nat.py).
Never anyone else's tables.
"""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import json
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from nvfabric.vnet.kernel.netns import inside
from nvfabric.vnet.model import Network

FAMILY = "inet"
T = TypeVar("T")


class NftError(RuntimeError):
    """nft refused a transaction: its own message, and the command."""

    def __init__(self, what: str, message: str) -> None:
        super().__init__(f"nft {what}: {message.strip()}")
        self.message = message


def element_network(value: object, version: int) -> Network:
    """One address field of a set element as nft's JSON lists it, as a prefix: a `{"prefix": ...}`, a
    `{"range": [first, last]}` or a single value, each bound an address, an integer or a hex string (how
    raw payloads and `typeof` keys come back). ValueError when a range is not exactly one prefix."""
    if isinstance(value, dict) and "prefix" in value:
        return ipaddress.ip_network(f"{value['prefix']['addr']}/{value['prefix']['len']}")
    first, last = value["range"] if isinstance(value, dict) else (value, value)
    lo, hi = element_address(first, version), element_address(last, version)
    bits = 32 if version == 4 else 128
    size = hi - lo + 1
    if size <= 0 or size & (size - 1) or lo & (size - 1):
        raise ValueError(f"{first}-{last} is not one prefix")
    cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    return cls((lo, bits - size.bit_length() + 1))


def element_address(value: object, version: int) -> int:
    """One address field of a set element as nft's JSON lists it (an integer, a hex string or an address),
    as an integer."""
    if isinstance(value, int):
        return value
    text = str(value)
    if text.startswith("0x"):
        return int(text, 16)
    address = ipaddress.ip_address(text)
    if address.version != version:
        raise ValueError(f"{text} is not an IPv{version} address")
    return int(address)


class Owned(Generic[T]):
    """One owned table kept equal to a wanted value: the whole table (`whole`) at the first write and after a
    refused one, then only the difference (`change`, None when nothing differs), written by `write`. A
    refusal forgets what was applied (the table may not be what we think) and is raised."""

    def __init__(self, whole: Callable[[T], Any], change: Callable[[T, T], Any | None],
                 write: Callable[[Any], Awaitable[None]]) -> None:
        self._whole, self._change, self._write = whole, change, write
        self.applied: T | None = None  # None: not known, the next apply replaces the table

    async def apply(self, want: T) -> None:
        doc = self._whole(want) if self.applied is None else self._change(self.applied, want)
        if doc is None:
            return
        try:
            await self._write(doc)
        except NftError:
            self.applied = None
            raise
        self.applied = want


class Nft:
    """nft for one network namespace. Through libnftables in this process when the library loads (a
    transaction costs well under a millisecond instead of a process start, which is tens of milliseconds
    on a host and hundreds in the lab's emulated VM), else through the `nft` command."""

    def __init__(self, netns: str | None = None, *, in_process: bool = True) -> None:
        self.netns = netns
        lib = _libnftables() if in_process else None
        self._lib: _LibNft | None = _LibNft(lib, netns) if lib is not None else None

    @property
    def in_process(self) -> bool:
        return self._lib is not None

    def _argv(self, *args: str) -> list[str]:
        base = ["nft", *args]
        return ["ip", "netns", "exec", self.netns, *base] if self.netns else base

    async def _run(self, what: str, stdin: bytes | None, *args: str) -> bytes:
        """The `nft` command with these arguments (the gateway's transactions go through this still)."""
        proc = await asyncio.create_subprocess_exec(
            *self._argv(*args), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await proc.communicate(stdin)
        except BaseException:
            # cancelled (the agent stopping): finish with the process while the loop still runs; a subprocess
            # transport left to the garbage collector after its loop closed raises "Event loop is closed"
            await _reap(proc)
            raise
        if proc.returncode != 0:
            raise NftError(what, err.decode(errors="replace") or f"exit status {proc.returncode}")
        return out

    async def _command(self, what: str, command: bytes, *argv: str) -> bytes:
        """`command` (nft's JSON or its command language) in one transaction; `argv` is the same for the
        `nft` command, used when libnftables is not there."""
        if self._lib is None:
            return await self._run(what, command if argv[-1:] == ("-",) else None, *argv)
        return await self._lib.run(what, command)

    async def transaction(self, what: str, doc: dict) -> None:
        """One transaction (all or nothing); NftError with nft's message when refused."""
        await self._command(what, json.dumps(doc).encode(), "-j", "-f", "-")

    async def script(self, what: str, text: str) -> None:
        """One transaction in nft's own language (all or nothing). For what nft 1.0.6's JSON cannot say: a
        `typeof` set key with a raw payload (vnet/portsecurity.py, vnet/decap.py)."""
        await self._command(what, text.encode(), "-f", "-")

    async def list_json(self, *args: str) -> dict:
        """`nft -j list ARGS...`, parsed."""
        return json.loads(await self._command("list", " ".join(("list", *args)).encode(), "-j", "list", *args))



# ---------------------------------------------------------------------------------------------- libnftables

_JSON_OUTPUT = 1 << 4  # NFT_CTX_OUTPUT_JSON (nftables/libnftables.h): lists come back as JSON; JSON input is
#                        recognised either way
_loaded: ctypes.CDLL | None | bool = False  # False: not tried yet
_LIB_LOCK = threading.Lock()
# libnftables parses a large transaction (a gateway's start: ~1 MB of JSON at 1,000 tenants) into many small
# allocations that glibc keeps after they are freed: measured 191 MiB more RSS at 1,000 tenants than with the
# nft command. Giving them back after such a call costs ~1 ms (on the host: 71 -> 44 MiB after a 0.9 MB one).
_TRIM_AFTER = 64 * 1024


def _malloc_trim() -> None:
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _libnftables() -> ctypes.CDLL | None:
    global _loaded
    if _loaded is False:
        try:
            lib = ctypes.CDLL("libnftables.so.1")
        except OSError:
            _loaded = None
        else:
            lib.nft_ctx_new.restype, lib.nft_ctx_new.argtypes = ctypes.c_void_p, [ctypes.c_uint32]
            lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_buffer_output.argtypes = lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
            for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
                getattr(lib, name).argtypes, getattr(lib, name).restype = [ctypes.c_void_p], ctypes.c_char_p
            lib.nft_ctx_output_get_flags.argtypes, lib.nft_ctx_output_get_flags.restype = [ctypes.c_void_p], \
                ctypes.c_uint
            lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
            lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            _loaded = lib
    return _loaded or None


class _LibNft:
    """libnftables for one namespace. Each command gets a context of its own (creating one costs about
    0.1 ms), made and used on an executor thread inside the namespace: a context's netlink socket belongs to
    the namespace it was opened in, and the event loop never waits on netlink. Nothing outlives a call, so
    nothing has to be freed later (a finalizer that took the executor's lock from inside a garbage
    collection could deadlock). libnftables keeps some global state: one call at a time per process."""

    def __init__(self, lib: ctypes.CDLL, netns: str | None) -> None:
        self.lib = lib
        self.netns = netns

    def _call(self, what: str, command: bytes) -> bytes:
        lib = self.lib
        with _LIB_LOCK, inside(self.netns):
            ctx = lib.nft_ctx_new(0)
            try:
                lib.nft_ctx_buffer_output(ctx)
                lib.nft_ctx_buffer_error(ctx)
                lib.nft_ctx_output_set_flags(ctx, lib.nft_ctx_output_get_flags(ctx) | _JSON_OUTPUT)
                rc = lib.nft_run_cmd_from_buffer(ctx, command)
                out = lib.nft_ctx_get_output_buffer(ctx) or b""
                err = lib.nft_ctx_get_error_buffer(ctx) or b""
            finally:
                lib.nft_ctx_free(ctx)
            if len(command) >= _TRIM_AFTER:
                _malloc_trim()
        if rc != 0:
            raise NftError(what, err.decode(errors="replace") or f"libnftables returned {rc}")
        return out

    async def run(self, what: str, command: bytes) -> bytes:
        # a cancelled caller does not stop the call: the transaction completes (or not) as a whole
        return await asyncio.get_running_loop().run_in_executor(None, self._call, what, command)


async def _reap(proc: asyncio.subprocess.Process) -> None:
    if proc.stdin is not None:
        proc.stdin.close()  # nft may still be reading its transaction: let it see the end (and refuse it)
    if proc.returncode is None:
        try:
            await asyncio.wait_for(proc.wait(), 5.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()
