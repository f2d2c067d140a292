"""The responder (hostagent/guest/responder.py) over an in-memory wire: frames judged by port and MAC,
dispatched by protocol, answered on the port they came from, counted; claims handed to the agent;
advertisements for a new port at once."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from collections.abc import Callable
from types import MappingProxyType

from nvfabric.hostagent.guest import frames, wire
from nvfabric.hostagent.guest.offer import PortService
from nvfabric.hostagent.guest.responder import Responder

from .test_guest_dhcp4 import MAC, PORT, request

HOST_MAC = bytes.fromhex("fe0000000001")
STRANGER = "02:00:00:00:00:99"


class MemoryWire:
    def __init__(self) -> None:
        self.receive: Callable[[str, bytes], None] | None = None
        self.sent: list[tuple[str, bytes]] = []
        self.lookups = 0

    def start(self, receive: Callable[[str, bytes], None]) -> None:
        self.receive = receive

    def close(self) -> None:
        self.receive = None

    def send(self, interface: str, frame: bytes) -> bool:
        self.sent.append((interface, frame))
        return True

    def host_mac(self, interface: str) -> bytes | None:
        self.lookups += 1
        return HOST_MAC if interface.startswith("tap") else None

    def forget(self) -> None:
        pass


def raw(eth: frames.Ethernet) -> bytes:
    return frames.ethernet(eth.dst, eth.src, eth.ethertype, eth.payload)


def arp(sender_mac: str, sender_ip: str) -> bytes:
    mac = frames.mac_bytes(sender_mac)
    body = (b"\x00\x01\x08\x00\x06\x04\x00\x02" + mac + ipaddress.IPv4Address(sender_ip).packed + frames.BROADCAST
            + ipaddress.IPv4Address(sender_ip).packed)
    return frames.ethernet(frames.BROADCAST, mac, frames.ETH_P_ARP, body)


async def test_a_request_from_the_ports_mac_is_answered_on_its_interface_and_others_are_counted():
    w = MemoryWire()
    r = Responder(w, lambda *_: asyncio.sleep(0))
    r.start()
    r.update({"tap1": PORT})
    assert w.receive is not None
    w.receive("tap1", raw(request(1)))
    assert [i for i, _ in w.sent] == ["tap1"]
    w.receive("tap9", raw(request(1)))  # not a port's interface (the underlay, another VM's tap not ours)
    w.receive("tap1", raw(request(1, src=STRANGER, chaddr=STRANGER)))
    w.receive("tap1", raw(request(7, ciaddr="10.0.0.5")))  # RELEASE: nothing to answer
    w.receive("tap1", raw(request(1))[:40])  # cut short
    w.receive("tap1", b"\x01")
    assert len(w.sent) == 1
    assert r.counters.as_dict() == {"dhcp4": {"answered": 1, "unknown_port": 1, "wrong_mac": 1, "ignored": 1,
                                              "malformed": 1}, "other": {"malformed": 1}}
    assert r.as_dict()["ports"] == 1
    await r.close()


async def test_claims_go_to_the_agent_and_advertisements_go_out_for_a_new_port():
    claims: list[tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address]] = []
    done = asyncio.Event()

    async def on_claim(port: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
        claims.append((port, address))
        done.set()

    def claimed(eth: frames.Ethernet, port: PortService) -> ipaddress.IPv4Address | None:
        found = frames.parse_arp(eth.payload)
        return found.sender_ip if found and found.sender_ip != (port.ipv4.ip if port.ipv4 else None) else None

    w = MemoryWire()
    r = Responder(w, on_claim, claimers={"arp": claimed},
                  advertisers={"ra": lambda port, mac: [b"advert-" + port.port.encode() + mac]}, interval=3600)
    r.start()
    r.update({"tap1": PORT})
    assert w.sent == [("tap1", b"advert-vm1" + HOST_MAC)]
    r.update({"tap1": PORT})  # unchanged: no new advertisement
    r.update({"tap1": PORT, "tap2": dataclasses.replace(PORT, port="vm2", interface="tap2")})
    assert [f for _, f in w.sent] == [b"advert-vm1" + HOST_MAC, b"advert-vm2" + HOST_MAC]
    assert w.receive is not None
    w.receive("tap1", arp(MAC, "10.0.0.100"))
    w.receive("tap1", arp(MAC, "10.0.0.5"))  # its own address: no claim
    await asyncio.wait_for(done.wait(), 10)
    assert claims == [("vm1", ipaddress.IPv4Address("10.0.0.100"))]
    assert r.counters.get("arp", "claimed") == 1 and r.counters.get("arp", "ignored") == 1
    assert r.counters.get("ra", "advertised") == 2
    await r.close()


def test_the_filter_program_jumps_stay_inside_it_and_end_in_returns():
    program = wire.BPF_PROGRAM
    for i, (code, jt, jf, _k) in enumerate(program):
        if code in (0x15, 0x45):
            assert i + 1 + jt < len(program) and i + 1 + jf < len(program)
    assert [c for c, *_ in program[-2:]] == [0x06, 0x06] and program[-1][3] == 0
    assert len(wire.bpf_bytes()) == 8 * len(program)


async def test_a_flood_of_requests_from_one_port_is_answered_up_to_its_rate():
    now = [0.0]
    w = MemoryWire()
    r = Responder(w, lambda *_: asyncio.sleep(0), rate=2.0, burst=5.0, clock=lambda: now[0])
    r.start()
    r.update({"tap1": PORT, "tap2": dataclasses.replace(PORT, port="vm2", interface="tap2")})
    assert w.receive is not None
    for _ in range(20):
        w.receive("tap1", raw(request(1)))
    w.receive("tap2", raw(request(1)))  # another port has its own budget
    assert r.counters.get("dhcp4", "answered") == 6 and r.counters.get("dhcp4", "rate_limited") == 15
    now[0] = 1.0  # two more a second
    for _ in range(5):
        w.receive("tap1", raw(request(1)))
    assert r.counters.get("dhcp4", "answered") == 8 and len(w.sent) == 8
    await r.close()


async def test_the_agent_serves_its_active_ports_and_reports_the_frames(tmp_path):
    from prometheus_client import generate_latest

    from nvfabric.hostagent.agent import Agent
    from nvfabric.hostagent.compute import View
    from nvfabric.hostagent.mobility import MacState, Mobility
    from tests.unit.agent_fixtures import VM_B1, VM_R1, catalog
    from tests.unit.test_agent_refusals import config

    agent = Agent(config(tmp_path))
    assert agent.status().guest_services == {"ports": 0, "frames": {}, "wire_errors": {}, "error": None}
    w = MemoryWire()
    agent._new_wire = lambda: w
    agent._view = View(catalog(VM_B1, VM_R1), {"blue": 1000, "red": 1001})
    agent._start_guest()
    assert w.receive is not None
    w.receive("tap-b1", raw(request(1, src=VM_B1.mac, chaddr=VM_B1.mac)))
    # (the port with an IPv6 CA got its first router advertisement unasked)
    assert agent.status().guest_services == {"ports": 2, "wire_errors": {},
                                             "frames": {"dhcp4": {"answered": 1}, "ra": {"advertised": 1}}}
    text = generate_latest(agent.registry).decode()
    assert 'nvfabric_agent_guest_frames_total{outcome="answered",protocol="dhcp4"} 1.0' in text
    # b1's VM moved to another host: its port is no longer served here
    agent._view = View(agent._view.catalog, agent._view.tables,
                       Mobility(MappingProxyType({(5001, VM_B1.mac): MacState(active=False)})))
    agent._update_guest()
    assert agent.status().guest_services["ports"] == 1
    w.receive("tap-b1", raw(request(1, src=VM_B1.mac, chaddr=VM_B1.mac)))
    assert agent.status().guest_services["frames"]["dhcp4"] == {"answered": 1, "unknown_port": 1}
    await agent._guest.close()
