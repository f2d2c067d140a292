"""Our BFD (`Bfd` on an event loop inside one namespace) against FRR's bfdd in another, over one veth.

FRR 8.4's bfdd has no authentication (its configuration has no such command), so keyed SHA1 is checked
between two of ours, each in its namespace, and against FRR only as a mismatch that must never come Up.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.integration.conftest import need
from nvfabric.bgp.bfd import BfdAuth, BfdConfig, BfdState, BfdStatus, Diagnostic
from nvfabric.bgp.bfd.endpoint import Bfd
from nvfabric.lab import netns
from nvfabric.lab.daemons import LoopThread
from nvfabric.lab.peers import Frr, Lab, wait_for

OURS, THEIRS = "10.77.0.1", "10.77.0.2"
OURS6, THEIRS6 = "fd00:77::1", "fd00:77::2"
OURS_LL, THEIRS_LL = "fe80::77:1", "fe80::77:2"
DEFAULT = BfdConfig()
FRR_BINARIES = ("/usr/lib/frr/zebra", "/usr/lib/frr/bfdd", "vtysh")


@dataclass
class Ours:
    """Our `Bfd` on a loop in a thread inside a namespace, with every `on_change` recorded and timed."""

    thread: LoopThread
    bfd: Bfd = field(default_factory=Bfd)
    changes: list[tuple[float, BfdStatus]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self.thread.run(self.bfd.start())

    def add(self, peer: str, config: BfdConfig = DEFAULT, local_address: str | None = None) -> None:
        async def go() -> None:
            self.bfd.add(peer, config, self._record, local_address)
        self.thread.run(go())

    def _record(self, status: BfdStatus) -> None:
        with self.lock:
            self.changes.append((time.monotonic(), status))

    def status(self) -> dict[str, BfdStatus]:
        async def go() -> list[BfdStatus]:
            return self.bfd.status()
        return {s.peer: s for s in self.thread.run(go())}

    def stop(self) -> None:
        self.thread.run(self.bfd.stop())


@pytest.fixture
def pair(lab: Lab) -> Iterator[tuple[Lab, str, str, str, str]]:
    """Namespaces `ours` and `frr` joined by a veth; yields (lab, ours ns, frr ns, our ifname, frr ifname)."""
    need(*FRR_BINARIES)
    ours, theirs = lab.namespace("o"), lab.namespace("f")
    lab.link(ours, [f"{OURS}/24", f"{OURS6}/64", f"{OURS_LL}/64"],
             theirs, [f"{THEIRS}/24", f"{THEIRS6}/64", f"{THEIRS_LL}/64"])
    yield lab, ours, theirs, _veth(ours), _veth(theirs)


def _veth(ns: str) -> str:
    links = json.loads(netns.run(["ip", "-n", ns, "-j", "link", "show"]).output)
    return next(link["ifname"] for link in links if link["ifname"] != "lo")


def frr_conf(*peers: str) -> str:
    lines = ["bfd"]
    for peer in peers:
        lines += [f" peer {peer}", "  receive-interval 300", "  transmit-interval 300", "  detect-multiplier 3",
                  " !"]
    return "\n".join([*lines, "!", ""])


def frr_peers(frr: Frr) -> dict[str, dict]:
    return {p["peer"]: p for p in frr.json("show bfd peers")}


def frr_state(frr: Frr, peer: str) -> str:
    return frr_peers(frr).get(peer, {}).get("status", "")


def test_up_with_frr_over_ipv4_and_ipv6_then_frr_killed(pair: tuple[Lab, str, str, str, str]) -> None:
    lab, ours_ns, frr_ns, _, _ = pair
    frr = Frr(lab, frr_ns, "bfd", None, frr_conf(OURS, OURS6))
    ours = Ours(LoopThread(ours_ns))
    try:
        ours.start()
        ours.add(THEIRS)
        ours.add(THEIRS6)
        wait_for(lambda: frr_state(frr, OURS) == "up" and frr_state(frr, OURS6) == "up", 15, what="FRR: up")
        wait_for(lambda: all(s.state is BfdState.UP for s in ours.status().values()), 5, what="ours: up")
        # The Poll Sequence after Up settles both sides on 300 ms; FRR saw our values.
        wait_for(lambda: all(s.transmit_interval == 0.3 and s.detect_time == 0.9
                             for s in ours.status().values()), 5, what="ours: 300 ms")
        seen = frr_peers(frr)[OURS]
        assert (seen["remote-receive-interval"], seen["remote-transmit-interval"],
                seen["remote-detect-multiplier"]) == (300, 300, 3)
        assert seen["remote-id"] == ours.status()[THEIRS].local_discriminator

        assert frr.bfdd is not None
        killed = time.monotonic()
        frr.bfdd.stop(signal.SIGKILL)
        wait_for(lambda: all(s.state is BfdState.DOWN for s in ours.status().values()), 5, what="ours: down")
        for peer in (THEIRS, THEIRS6):
            when, status = next((t, s) for t, s in ours.changes
                                if s.peer == peer and s.state is BfdState.DOWN)
            assert status.diagnostic is Diagnostic.CONTROL_DETECTION_TIME_EXPIRED
            # 900 ms of detection after the last packet, plus scheduling: the generous bound.
            assert when - killed < 3.0
            assert status.downs == 1 and status.up_since is None
    finally:
        ours.stop()
        ours.thread.close()


def test_our_stop_is_seen_down_by_frr(pair: tuple[Lab, str, str, str, str]) -> None:
    lab, ours_ns, frr_ns, _, _ = pair
    frr = Frr(lab, frr_ns, "bfd", None, frr_conf(OURS))
    ours = Ours(LoopThread(ours_ns))
    try:
        ours.start()
        ours.add(THEIRS)
        wait_for(lambda: frr_state(frr, OURS) == "up", 15, what="FRR: up")
        ours.stop()
        wait_for(lambda: frr_state(frr, OURS) == "down", 5, what="FRR: down")
        assert frr_peers(frr)[OURS]["remote-diagnostic"] == "administratively down"
    finally:
        ours.thread.close()


def test_ipv6_link_local_with_frr(pair: tuple[Lab, str, str, str, str]) -> None:
    lab, ours_ns, frr_ns, our_if, frr_if = pair
    conf = frr_conf(f"{OURS_LL} interface {frr_if} local-address {THEIRS_LL}")
    frr = Frr(lab, frr_ns, "bfd", None, conf)
    ours = Ours(LoopThread(ours_ns))
    try:
        ours.start()
        ours.add(f"{THEIRS_LL}%{our_if}", local_address=f"{OURS_LL}%{our_if}")
        wait_for(lambda: frr_state(frr, OURS_LL) == "up", 15, what="FRR: up")
        wait_for(lambda: ours.status()[f"{THEIRS_LL}%{our_if}"].state is BfdState.UP, 5, what="ours: up")
    finally:
        ours.stop()
        ours.thread.close()


SHA1 = BfdAuth(type="keyed-sha1", key_id=5, password="bfd-secret")


def test_keyed_sha1_between_two_of_ours_and_a_wrong_key(pair: tuple[Lab, str, str, str, str]) -> None:
    lab, a_ns, b_ns, _, _ = pair
    a, b = Ours(LoopThread(a_ns)), Ours(LoopThread(b_ns))
    try:
        a.start()
        b.start()
        a.add(THEIRS, BfdConfig(auth=SHA1))
        b.add(OURS, BfdConfig(auth=SHA1))
        a.add(THEIRS6, BfdConfig(auth=SHA1))
        b.add(OURS6, BfdConfig(auth=BfdAuth(type="keyed-sha1", key_id=5, password="wrong")))
        wait_for(lambda: a.status()[THEIRS].state is BfdState.UP and b.status()[OURS].state is BfdState.UP,
                 10, what="sha1: up")
        # The wrong key: both sides keep dropping what they get and stay Down for several slow intervals.
        wait_for(lambda: a.status()[THEIRS6].dropped >= 3 and b.status()[OURS6].dropped >= 3, 10,
                 what="wrong key dropped")
        assert a.status()[THEIRS6].state is BfdState.DOWN and b.status()[OURS6].state is BfdState.DOWN
        assert a.status()[THEIRS6].packets_in == 0
        assert not [s for _, s in a.changes + b.changes if s.peer in (THEIRS6, OURS6)]
    finally:
        for side in (a, b):
            side.stop()
            side.thread.close()


def test_local_address_configured_later(pair: tuple[Lab, str, str, str, str]) -> None:
    """A session whose local address is not there yet waits for it (a daemon may start before the
    interface is addressed), then comes up."""
    lab, a_ns, b_ns, a_if, _ = pair
    later = "10.77.0.9"
    a, b = Ours(LoopThread(a_ns)), Ours(LoopThread(b_ns))
    try:
        a.start()
        b.start()
        a.add(THEIRS, local_address=later)
        b.add(later)
        wait_for(lambda: b.status()[later].packets_out >= 1, 5, what="b sending")
        assert a.status()[THEIRS].packets_out == 0
        netns.run(["ip", "-n", a_ns, "addr", "add", f"{later}/24", "dev", a_if])
        wait_for(lambda: a.status()[THEIRS].state is BfdState.UP and b.status()[later].state is BfdState.UP,
                 10, what="up from the new address")
        with pytest.raises(ValueError, match="^local_address: "):
            a.add(THEIRS6, local_address=OURS)
    finally:
        for side in (a, b):
            side.stop()
            side.thread.close()


def test_auth_against_frr_without_auth_never_comes_up(pair: tuple[Lab, str, str, str, str]) -> None:
    lab, ours_ns, frr_ns, _, _ = pair
    frr = Frr(lab, frr_ns, "bfd", None, frr_conf(OURS))
    ours = Ours(LoopThread(ours_ns))
    try:
        ours.start()
        ours.add(THEIRS, BfdConfig(auth=SHA1))
        wait_for(lambda: ours.status()[THEIRS].dropped >= 3, 10, what="FRR's unauthenticated packets dropped")
        assert ours.status()[THEIRS].state is BfdState.DOWN and frr_state(frr, OURS) != "up"
    finally:
        ours.stop()
        ours.thread.close()


def test_ttl_below_255_is_dropped(pair: tuple[Lab, str, str, str, str]) -> None:
    """RFC 5881 5: a packet that crossed a router (TTL 254) is not from the neighbour and is refused."""
    lab, ours_ns, other_ns, _, _ = pair
    ours = Ours(LoopThread(ours_ns))
    sender = LoopThread(other_ns)
    try:
        ours.start()
        ours.add(THEIRS, BfdConfig(passive=True))

        async def send(ttl: int) -> None:
            # Down, My Discriminator 1, Your Discriminator 0: what a neighbour starting up sends.
            data = bytes.fromhex("20400318 00000001 00000000 000f4240 000f4240 00000000")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
                sock.bind((THEIRS, 0))
                sock.sendto(data, (OURS, 3784))

        sender.run(send(254))
        wait_for(lambda: ours.status()[THEIRS].dropped == 1, 5, what="TTL 254 dropped")
        assert ours.status()[THEIRS].state is BfdState.DOWN
        sender.run(send(255))
        wait_for(lambda: ours.status()[THEIRS].state is BfdState.INIT, 5, what="TTL 255 accepted")
    finally:
        ours.stop()
        ours.thread.close()
        sender.close()

