"""The port-security builder (vnet/portsecurity.py), pure: which elements a set of ports needs, and that a
change writes only the changed port's elements, whatever the number of ports."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress

from nvfabric.vnet import portsecurity as ps
from nvfabric.vnet.model import Port


def port(i: int, **over: object) -> Port:
    cas = (ipaddress.ip_address(f"10.{i >> 8}.{i & 0xFF}.10"), ipaddress.ip_address(f"fd00:b::{i:x}:10"))
    return Port(f"vm{i}", f"tap{i}", f"02:00:00:01:{i >> 8:02x}:{i & 0xFF:02x}", 5001, cas, **over)  # type: ignore[arg-type]


def lines(text: str | None) -> list[str]:
    return text.splitlines() if text else []


def test_attaching_one_port_writes_the_same_few_elements_at_10_or_1000_ports() -> None:
    sizes = {}
    for n in (10, 1000):
        ports = [port(i) for i in range(n)]
        before, after = ps.elements(ports), ps.elements([*ports, port(n)])
        text = ps.changes(before, after)
        sizes[n] = (len(lines(text)), ps._delta(before, after), len(text or ""))
        assert f'"tap{n}"' in (text or "") and f'"tap{n - 1}"' not in (text or "")
    assert sizes[10][:2] == sizes[1000][:2], sizes  # constant: lines and elements
    # one port's worth: guarded x2, mac, IPv4 CA, IPv6 CA and link-local x2 (src6 and nd6), 2 ARP, 5 counters
    assert sizes[1000][1] == 2 + 1 + 1 + 2 + 2 + 2 + 5


def test_detaching_and_readdressing_one_port_touch_only_its_elements() -> None:
    ports = [port(i) for i in range(1000)]
    base = ps.elements(ports)
    gone = ps.changes(base, ps.elements(ports[:-1]))
    assert all("tap999" in ln for ln in lines(gone))
    # map elements leave before the counters they name
    text = lines(gone)
    assert max(i for i, ln in enumerate(text) if ln.startswith("delete element inet nvfabric-ports spoofed_source")) < \
        min(i for i, ln in enumerate(text) if ln.startswith("delete counter"))
    moved = dataclasses.replace(ports[5], addresses=(ipaddress.ip_address("10.0.5.99"),))
    changed = lines(ps.changes(base, ps.elements([*ports[:5], moved, *ports[6:]])))
    assert all("tap5" in ln for ln in changed) and not any("counter" in ln for ln in changed)  # counters kept
    assert ps.changes(base, ps.elements(list(reversed(ports)))) is None


def test_port_security_off_means_no_elements_exact_addresses_in_the_hash_sets_prefixes_in_the_interval_ones() -> None:
    assert ps.elements([port(1, port_security=False)]).size() == 0
    net, host = ipaddress.ip_network("10.0.1.0/24"), ipaddress.ip_network("192.168.60.5/32")
    wide = port(1, allowed_addresses=(net, ipaddress.ip_network("10.0.0.0/16"), host))
    sets = ps.elements([wide]).sets
    ca4, ca6 = ipaddress.ip_network("10.0.1.10/32"), ipaddress.ip_network("fd00:b::1:10/128")
    # the CA stays exact even inside an allowed prefix: the hash is the cheap path, and has no overlap rule
    assert {k[2] for k in sets["inet", "src4_exact"]} == {ca4, host}
    assert {k[2] for k in sets["inet", "src4"]} == {ipaddress.ip_network("10.0.0.0/16")}  # covers 10.0.1.0/24
    assert {k[2] for k in sets["arp", "arp4_exact"]} == {ca4, host, ipaddress.ip_network("0.0.0.0/32")}  # probes
    assert {k[2] for k in sets["arp", "arp4"]} == {ipaddress.ip_network("10.0.0.0/16")}
    assert {k[2] for k in sets["inet", "src6_exact"]} == {k[2] for k in sets["inet", "nd6_exact"]} == {ca6}
    assert {k[2] for k in sets["inet", "src6"]} == {k[2] for k in sets["inet", "nd6"]} == {ps.LINK_LOCAL}


def test_the_whole_table_replaces_in_one_transaction_and_renders_the_na_target_as_raw_128_bits() -> None:
    text = ps.ruleset(ps.elements([port(1)]))
    first = lines(text)[:3]
    assert first == ["add table inet nvfabric-ports", "delete table inet nvfabric-ports",
                     "add table inet nvfabric-ports"]
    assert '"tap1" . 02:00:00:01:00:01 . 0xfd00000b000000000000000000010010' in text
    assert "0xfe800000000000000000000000000000-0xfe80000000000000ffffffffffffffff" in text
    assert f'comment "{ps.LAYOUT}"' in text


def test_the_hash_sets_are_looked_up_before_the_interval_sets_in_every_check() -> None:
    text = ps.ruleset(ps.elements([port(1)]))
    assert "add set inet nvfabric-ports src4_exact { type ifname . ether_addr . ipv4_addr; }" in text
    # the rules in order as one text: every interval set's first use comes after its hash set's
    rules = "\n".join(ln for ln in lines(text) if ln.startswith("add rule"))
    for name in ("src4", "src6", "nd6", "arp4"):
        assert -1 < rules.find(f"@{name}_exact ") < rules.find(f"@{name} "), name
    # a NS or NA whose address is in neither set is dropped: both lookups in one rule, the hash first
    assert "@src6_exact iifname . ether saddr . ip6 saddr != @src6 counter" in rules


class FakeNft:
    """Records the transactions; the kernel starts without our tables."""

    def __init__(self) -> None:
        self.scripts: list[str] = []

    async def script(self, what: str, text: str) -> None:
        self.scripts.append(text)

    async def list_json(self, *args: str) -> dict:
        raise ps.NftError("list", "No such file or directory")


def test_the_applier_writes_the_whole_table_once_then_one_ports_elements_per_attach() -> None:
    nft = FakeNft()
    guard = ps.PortSecurity(nft)  # type: ignore[arg-type]
    ports = [port(i) for i in range(1000)]
    assert asyncio.run(guard.apply(ports)) == ps.elements(ports).size()
    assert nft.scripts[0].startswith("add table inet nvfabric-ports\ndelete table")
    one = ps.port_elements(port(1000)).size()
    assert asyncio.run(guard.apply([*ports, port(1000)])) == one
    assert "tap999" not in nft.scripts[1] and "tap1000" in nft.scripts[1]
    assert asyncio.run(guard.apply([*ports, port(1000)])) == 0 and len(nft.scripts) == 2  # nothing to do
    assert asyncio.run(guard.apply(ports)) == one  # detached
    assert all("tap1000" in ln and ln.startswith("delete") for ln in lines(nft.scripts[2]))


class OldNft(FakeNft):
    """The kernel has both tables as an older agent (layout 2) left them: rules marked with the old layout."""

    async def list_json(self, *args: str) -> dict:
        chain = "prerouting" if args[1] == "inet" else "input"
        return {"nftables": [{"rule": {"family": args[1], "table": ps.TABLE, "chain": chain,
                                       "comment": "nvfabric port security 2"}}]}


def test_an_older_layouts_tables_are_replaced_once_then_changed_by_elements() -> None:
    nft = OldNft()
    guard = ps.PortSecurity(nft)  # type: ignore[arg-type]
    ports = [port(i) for i in range(3)]
    asyncio.run(guard.apply(ports))
    assert nft.scripts[0].startswith("add table inet nvfabric-ports\ndelete table") and "src4_exact" in nft.scripts[0]
    asyncio.run(guard.apply([*ports, port(3)]))
    assert "table" not in nft.scripts[1] and "src4_exact" in nft.scripts[1]
