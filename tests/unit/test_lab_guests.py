"""lab/guests.py: what each Debian client hands its script, and rdisc6's output, read back as values."""

from __future__ import annotations

import ipaddress

import pytest

from nvfabric.lab import guests

ROUTES = ((ipaddress.IPv4Network("10.77.0.0/16"), ipaddress.IPv4Address("10.9.0.5")),
          (ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv4Address("10.9.0.1")))


def test_udhcpc_variables():
    env = guests.parse_env("ARG1=bound\nip=10.9.0.50\nmask=24\nrouter=10.9.0.1\ndns=10.9.0.53 10.9.0.54\n"
                           "serverid=10.9.0.1\nmtu=1400\nsearch=tenant.example\nlease=600\n"
                           "staticroutes=10.77.0.0/16 10.9.0.5 0.0.0.0/0 10.9.0.1\nnot a variable\n")
    got = guests.lease4_from("udhcpc", env)
    assert got.address == ipaddress.IPv4Interface("10.9.0.50/24") and got.event == "bound"
    assert got.dns == (ipaddress.IPv4Address("10.9.0.53"), ipaddress.IPv4Address("10.9.0.54"))
    assert (got.mtu, got.lease_time, got.search, got.routes) == (1400, 600, ("tenant.example",), ROUTES)


def test_dhclient_variables_with_rfc3442_bytes():
    env = {"reason": "REBOOT", "new_ip_address": "10.9.0.50", "new_subnet_mask": "255.255.255.0",
           "new_routers": "10.9.0.1", "new_domain_name_servers": "10.9.0.53", "new_interface_mtu": "1400",
           "new_domain_search": "tenant.example.", "new_dhcp_lease_time": "600",
           "new_dhcp_server_identifier": "10.9.0.1",
           "new_rfc3442_classless_static_routes": "16 10 77 10 9 0 5 0 10 9 0 1"}
    got = guests.lease4_from("dhclient", env)
    assert got.address == ipaddress.IPv4Interface("10.9.0.50/24") and got.event == "REBOOT"
    assert (got.search, got.routes, got.server) == (("tenant.example",), ROUTES, ipaddress.IPv4Address("10.9.0.1"))


def test_rfc3442_widths():
    # /32 (4 octets), /25 (4 octets), /8 (1 octet), /0 (none)
    text = "32 192 0 2 7 10 0 0 1 25 192 0 2 128 10 0 0 2 8 172 10 0 0 3 0 10 0 0 4"
    assert [str(n) for n, _ in guests.rfc3442_routes(text)] == ["192.0.2.7/32", "192.0.2.128/25", "172.0.0.0/8",
                                                                "0.0.0.0/0"]
    with pytest.raises(ValueError, match="malformed"):
        guests.rfc3442_routes("24 10 0")


def test_dhcpcd_variables():
    env = {"reason": "BOUND", "new_ip_address": "10.9.0.50", "new_subnet_mask": "255.255.255.0",
           "new_classless_static_routes": "10.77.0.0/16 10.9.0.5 0.0.0.0/0 10.9.0.1"}
    got = guests.lease4_from("dhcpcd", env)
    assert got.routes == ROUTES and got.mtu is None and got.dns == ()


def test_dhclient6_variables():
    got = guests.lease6_from("dhclient", {"reason": "BOUND6", "new_ip6_address": "fd00:b::11",
                                          "new_dhcp6_name_servers": "fd00:b::53"})
    assert got.address == ipaddress.IPv6Address("fd00:b::11") and got.dns == (ipaddress.IPv6Address("fd00:b::53"),)


RDISC6 = """Soliciting ff02::2 (ff02::2) on eth0...

Hop limit                 :           64 (      0x40)
Stateful address conf.    :          Yes
Stateful other conf.      :          Yes
Mobile home agent         :           No
Router preference         :       medium
Neighbor discovery proxy  :           No
Router lifetime           :         1800 (0x00000708) seconds
Reachable time            :  unspecified (0x00000000)
Retransmit time           :  unspecified (0x00000000)
 Prefix                   : fd00:b::/64
  On-link                 :          Yes
  Autonomous address conf.:          Yes
  Valid time              :     infinite (0xffffffff)
  Pref. time              :     infinite (0xffffffff)
 MTU                      :         1400 bytes (valid)
 Source link-layer address: C6:31:BF:A9:8F:EE
 DNS search list          : tenant.example
  DNS search list lifetime:     infinite (0xffffffff)
 Recursive DNS server     : fd00:b::53
  DNS server lifetime     :     infinite (0xffffffff)
 from fe80::c431:bfff:fea9:8fee
"""


def test_rdisc6_output():
    (ra,) = guests.parse_rdisc6(RDISC6)
    assert (ra.managed, ra.other, ra.lifetime, ra.mtu) == (True, True, 1800, 1400)
    assert ra.prefixes == (ipaddress.IPv6Network("fd00:b::/64"),)
    assert ra.rdnss == (ipaddress.IPv6Address("fd00:b::53"),) and ra.dnssl == ("tenant.example",)
    assert ra.router == ipaddress.IPv6Address("fe80::c431:bfff:fea9:8fee")
    assert guests.parse_rdisc6("Soliciting ff02::2 (ff02::2) on eth0...\nTimed out.\nNo response.\n") == []


def test_unknown_client_is_refused():
    with pytest.raises(ValueError, match="unknown client"):
        guests.lease4_from("pump", {})
