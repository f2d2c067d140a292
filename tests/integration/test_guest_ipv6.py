"""Router advertisements and DHCPv6 (hostagent/guest/ra.py, dhcp6.py) against Debian's own clients, on this
machine's kernel: a hypervisor namespace whose port (tap-g1, a veth) leads to a VM namespace, test equipment
(the agent's responder, tests/guest_ipv6.py). `rdisc6` must show what the advertisement
carries, `dhclient -6` and `dhcpcd -6` must get the port's CA and the DNS configuration, and the guest's
kernel must take them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from nvfabric.hostagent.guest import frames, ra
from nvfabric.lab import netns
from tests.guest_ipv6 import RECORD_SCRIPT, Link, assert_reaches_its_router, env_of, open_link, run_dhcpcd, wait_for
from tests.integration.conftest import need


@pytest.fixture
def link(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Link]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    with open_link(tmp_path, request.node.name) as the_link:
        yield the_link


def _fields(text: str) -> dict[str, str]:
    """rdisc6's `Name : value` lines, the first of each name."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            out.setdefault(name.strip(), value.strip())
    return out


def test_rdisc6_sees_the_prefix_on_link_the_mtu_the_flags_and_the_dns_configuration(link: Link) -> None:
    need("rdisc6")
    result = link.vm_run(["rdisc6", "-1", "-w", "2000", "gst6"])
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    got = _fields(out)
    assert got["Stateful address conf."] == "Yes" and got["Stateful other conf."] == "Yes", out
    assert got["Hop limit"].split()[0] == "64"
    assert got["Router lifetime"].split()[0] == str(ra.ROUTER_LIFETIME)
    assert got["MTU"].split()[0] == "1410"
    assert got["Prefix"] == "fd00:c::/64"
    assert got["On-link"] == "Yes" and got["Autonomous address conf."] == "No", out
    assert got["Valid time"].split()[0] == "7200"
    assert "Recursive DNS server     : fd00:53::53" in out and "Recursive DNS server     : fd00:53::54" in out, out
    assert "DNS search list          : tenant.example" in out and "corp.example" in out, out
    host_mac = frames.mac_text(link.responder.host_mac)
    assert got["Source link-layer address"] == host_mac.upper() or got["Source link-layer address"] == host_mac
    # the router is the host side's EUI-64 link-local, one the host's kernel really has on the port
    router = str(frames.link_local(host_mac))
    assert f"from {router}" in out, out
    assert router in netns.run(["ip", "-n", link.hv, "-6", "addr", "show", "dev", "tap-g1"]).output
    # the guest's own kernel took the advertisement: a default route via the router, the prefix on-link,
    # and no address of its own making (A=0)
    wait_for(lambda: f"default via {router}" in link.vm_run(["ip", "-6", "route"]).stdout, "the default route")
    routes = link.vm_run(["ip", "-6", "route"]).stdout
    assert "fd00:c::/64 dev gst6" in routes, routes
    assert "fd00:c:" not in link.vm_run(["ip", "-6", "addr", "show", "dev", "gst6"]).stdout


def test_dhclient_gets_the_ports_ca_and_the_dns_configuration(link: Link) -> None:
    need("dhclient")
    script = link.tmp / "record.sh"
    script.write_text(RECORD_SCRIPT)
    script.chmod(0o755)
    lease, pid = link.tmp / "dhclient6.leases", link.tmp / "dhclient6.pid"
    cmd = ["dhclient", "-6", "-1", "-v", "-sf", str(script), "-lf", str(lease), "-pf", str(pid), "gst6"]
    try:
        result = link.vm_run(cmd, timeout=90)
        assert result.returncode == 0, result.stdout + result.stderr
        bound = link.tmp / "env.BOUND6"
        wait_for(bound.exists, "dhclient's BOUND6")
        env = env_of(bound)
        assert env["new_ip6_address"] == "fd00:c::11"
        assert env["new_ip6_prefixlen"] == "128"  # an IA_NA address; the prefix comes from the advertisement
        assert env["new_dhcp6_name_servers"].split() == ["fd00:53::53", "fd00:53::54"]
        assert env["new_dhcp6_domain_search"].split() == ["tenant.example.", "corp.example."]
        assert env["new_max_life"] == "7200" and env["new_preferred_life"] == "7200"
        assert env["new_renew"] == "3600" and env["new_rebind"] == "5760"  # T1, T2: 0.5 and 0.8 of the lease
        # the server is the host side's DUID-LL (dhclient prints octets without leading zeros)
        assert [int(o, 16) for o in env["new_dhcp6_server_id"].split(":")] == list(link.responder.duid)
        assert link.responder.answered("dhcp6") >= 2  # ADVERTISE, then REPLY to its REQUEST
    finally:
        if pid.exists():
            try:
                os.kill(int(pid.read_text().strip()), 15)
            except (ProcessLookupError, ValueError):
                pass


def test_dhcpcd_takes_the_advertisement_and_the_dhcpv6_lease_into_the_guests_kernel(link: Link) -> None:
    need("dhcpcd")
    result = run_dhcpcd(link)
    assert result.returncode == 0, result.stdout + result.stderr
    advert = env_of(link.tmp / "env.ROUTERADVERT")
    assert advert["nd1_flags"] == "MO" and advert["nd1_mtu"] == "1410"
    assert advert["nd1_prefix_information1_flags"] == "L"  # on-link, no SLAAC
    assert advert["nd1_rdnss1_servers"].split() == ["fd00:53::53", "fd00:53::54"]
    assert advert["nd1_dnssl1_search"].split() == ["tenant.example", "corp.example"]
    bound = env_of(link.tmp / "env.BOUND6")
    assert bound["new_dhcp6_ia_na1_ia_addr1"] == "fd00:c::11"
    assert bound["new_dhcp6_name_servers"].split() == ["fd00:53::53", "fd00:53::54"]
    assert bound["new_dhcp6_domain_search"].split() == ["tenant.example", "corp.example"]
    # in the guest's kernel: the CA, the prefix on-link, the default route via the host's link-local
    assert "inet6 fd00:c::11/128" in link.vm_run(["ip", "-6", "addr", "show", "dev", "gst6"]).stdout
    routes = link.vm_run(["ip", "-6", "route"]).stdout
    router = frames.link_local(frames.mac_text(link.responder.host_mac))
    assert "fd00:c::/64 dev gst6" in routes and f"default via {router} dev gst6" in routes, routes
    assert_reaches_its_router(link)
