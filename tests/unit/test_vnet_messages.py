"""The netlink encoders against pyroute2's decoders (with vnet's additions) and against iproute2's bytes."""

import struct

import pytest

from pyroute2.netlink.rtnl.fibmsg import fibmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from nvfabric.vnet.kernel import messages as m
from nvfabric.vnet.kernel import observe
from nvfabric.vnet.kernel.objects import EncapRoute

# `ip route add 10.1.0.20/32 encap ip id 1280256 dst 198.51.100.2 ttl 64 key via 169.254.0.1 dev d0 onlink
#  table 100 proto 78` as the 6.1 kernel dumped it back (captured in the VM): the attribute numbers and
# byte orders our encoder uses must decode it.
IPROUTE2_ENCAP_IP = bytes.fromhex(
    "7c00000018002200020000000101000002200000644e00011400000008000f0064000000080001000a01001408000500a9fe0001"
    "0800040008000000380016000c000100000000000013890008000200c633640208000300000000000500050000000000050004"
    "004000000006000600000400000600150002000000"
)


def test_iproute2_encap_ip_route_decodes_with_our_route_message():
    msg = m.RouteMessage(IPROUTE2_ENCAP_IP)
    msg.decode()
    assert msg.get_attr("RTA_ENCAP_TYPE") == m.LWTUNNEL_ENCAP_IP
    encap = msg.get_attr("RTA_ENCAP")
    assert encap.get_attr("LWTUNNEL_IP_ID") == 5001 << 8
    assert encap.get_attr("LWTUNNEL_IP_DST") == "198.51.100.2"
    assert encap.get_attr("LWTUNNEL_IP_TTL") == 64
    assert encap.get_attr("LWTUNNEL_IP_FLAGS") == m.TUNNEL_KEY
    assert msg["flags"] & m.RTNH_F_ONLINK


def test_our_encap_attributes_are_byte_identical_to_iproute2s_where_both_send_them():
    # iproute2 orders ID, DST, (SRC, TOS from the kernel dump), TTL, FLAGS; compare attribute by attribute
    def attrs(blob: bytes) -> dict[int, bytes]:
        out, off = {}, 0
        while off + 4 <= len(blob):
            length, kind = struct.unpack_from("=HH", blob, off)
            out[kind & 0x3FFF] = blob[off + 4 : off + length]  # without NLA_F_NESTED
            off += (length + 3) & ~3
        return out

    mine = attrs(attrs(m.tunnel_encap(4, 5001 << 8, "198.51.100.2", 64))[m.RTA_ENCAP])
    kernel = attrs(attrs(IPROUTE2_ENCAP_IP[16 + 12 :])[m.RTA_ENCAP])  # after nlmsghdr and rtmsg
    for kind in (m.LWTUNNEL_IP_ID, m.LWTUNNEL_IP_DST, m.LWTUNNEL_IP_TTL, m.LWTUNNEL_IP_FLAGS):
        assert mine[kind] == kernel[kind], kind


def test_encap_ip6_route_round_trips_through_route_message():
    body = m.route_body(4, 1000, "10.1.0.20", 32, 78, flags=m.RTNH_F_ONLINK, metric=1024, oif=5,
                        gateway="169.254.0.1", extra=m.tunnel_encap(6, 5001 << 8, "2001:db8::2", 64))
    msg = m.RouteMessage(m.message(m.RTM_NEWROUTE, 0, 1, body))
    msg.decode()
    assert (msg["table"], msg.get_attr("RTA_TABLE")) == (m.RT_TABLE_COMPAT, 1000)
    assert msg.get_attr("RTA_DST") == "10.1.0.20" and msg.get_attr("RTA_GATEWAY") == "169.254.0.1"
    encap = msg.get_attr("RTA_ENCAP")
    assert encap.get_attr("LWTUNNEL_IP6_ID") == 5001 << 8
    assert encap.get_attr("LWTUNNEL_IP6_DST") == "2001:db8::2"
    assert encap.get_attr("LWTUNNEL_IP6_HOPLIMIT") == 64
    assert encap.get_attr("LWTUNNEL_IP6_FLAGS") == m.TUNNEL_KEY


def test_plain_pyroute2_cannot_decode_the_encap_and_is_not_modified():
    msg = rtmsg(IPROUTE2_ENCAP_IP)
    msg.decode()
    assert isinstance(msg.get_attr("RTA_ENCAP"), str)  # hex: 0.9.7 has no class for LWTUNNEL_ENCAP_IP
    assert m.LWTUNNEL_ENCAP_IP not in rtmsg.encaps


def test_ip6gretap_external_decodes_even_after_pyroute2s_own_class_compiled_first():
    raw = m.message(m.RTM_NEWLINK, 0, 1, m.link_body(name="nvf-gre6", kind="ip6gretap", info_data=m.collect_md_info()))
    plain = ifinfmsg(raw)
    plain.decode()  # compiles pyroute2's ip6gre_data table first (the order that broke a naive subclass)
    assert plain.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA").get_attr("IFLA_IP6GRE_COLLECT_METADATA") is None
    ours = m.LinkMessage(raw)
    ours.decode()
    info = ours.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_KIND") == "ip6gretap"
    assert info.get_attr("IFLA_INFO_DATA").get_attr("IFLA_IP6GRE_COLLECT_METADATA") is True


def test_vrf_link_and_rule_and_neighbour_decode_with_pyroute2():
    link = ifinfmsg(m.message(m.RTM_NEWLINK, 0, 1, m.link_body(name="nvf-rd1", kind="vrf", info_data=m.vrf_info(100),
                                                                up=True)))
    link.decode()
    assert link.get_attr("IFLA_IFNAME") == "nvf-rd1"
    assert link.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA").get_attr("IFLA_VRF_TABLE") == 100
    rule = fibmsg(m.message(m.RTM_NEWRULE, 0, 1, m.rule_body(6, "nvf-gre4", 5001 << 8, 100, 900, 78)))
    rule.decode()
    assert (rule["family"], rule["action"]) == (10, m.FR_ACT_TO_TBL)
    assert rule.get_attr("FRA_TUN_ID") == 5001 << 8 and rule.get_attr("FRA_IIFNAME") == "nvf-gre4"
    assert (rule.get_attr("FRA_TABLE"), rule.get_attr("FRA_PRIORITY"), rule.get_attr("FRA_PROTOCOL")) == (100, 900, 78)
    neigh = ndmsg(m.message(m.RTM_NEWNEIGH, 0, 1, m.neigh_body(6, 7, "fe80::1", lladdr="02:00:5e:10:00:01",
                                                                 proxy=False, proto=78)))
    neigh.decode()
    assert neigh["state"] == m.NUD_PERMANENT and neigh["ifindex"] == 7
    assert neigh.get_attr("NDA_DST") == "fe80::1" and neigh.get_attr("NDA_LLADDR") == "02:00:5e:10:00:01"
    assert neigh.get_attr("NDA_PROTOCOL") == 78


def test_the_one_pack_encap_route_is_byte_identical_to_the_composed_encoder():
    for family, pa_family, dst, gateway, pa in [
        (4, 4, "10.1.0.20", "169.254.0.1", "198.51.100.2"), (6, 4, "fd00::20", "fe80::1", "198.51.100.2"),
        (4, 6, "10.1.0.20", "169.254.0.1", "2001:db8::2"), (6, 6, "fd00::20", "fe80::1", "2001:db8::2"),
    ]:
        plen = 32 if family == 4 else 128
        composed = m.message(m.RTM_NEWROUTE, 0x505, 9, m.route_body(
            family, 1000, dst, plen, 78, flags=m.RTNH_F_ONLINK, metric=1024, oif=5, gateway=gateway,
            extra=m.tunnel_encap(pa_family, 5001 << 8, pa, 64)))
        assert m.encap_route(9, 0x505, family, 1000, dst, plen, 78, 1024, 5, gateway, pa_family, 5001 << 8, pa,
                             64) == composed


def test_the_hand_parser_agrees_with_route_message_on_iproute2s_bytes():
    msg = m.RouteMessage(IPROUTE2_ENCAP_IP)
    msg.decode()
    fields = m.parse_route(IPROUTE2_ENCAP_IP)
    encap = msg.get_attr("RTA_ENCAP")
    assert (fields.family, fields.table, fields.dst, fields.dst_len, fields.proto, fields.oif) == (
        4, msg.get_attr("RTA_TABLE"), msg.get_attr("RTA_DST"), msg["dst_len"], msg["proto"], msg.get_attr("RTA_OIF"))
    assert (fields.encap_type, fields.tun_id, fields.tun_dst, fields.tun_ttl, fields.tun_flags) == (
        msg.get_attr("RTA_ENCAP_TYPE"), encap.get_attr("LWTUNNEL_IP_ID"), encap.get_attr("LWTUNNEL_IP_DST"),
        encap.get_attr("LWTUNNEL_IP_TTL"), encap.get_attr("LWTUNNEL_IP_FLAGS"))
    assert fields.metric == 0  # IPv4 omits RTA_PRIORITY for metric 0


def test_the_hand_parser_reads_an_ip6_encap_of_an_ipv6_route():
    raw = m.message(m.RTM_NEWROUTE, 0, 1, m.route_body(
        6, 1000, "fd00::20", 128, 78, flags=m.RTNH_F_ONLINK, metric=1024, oif=5, gateway="fe80::1",
        extra=m.tunnel_encap(6, 5001 << 8, "2001:db8::2", 64)))
    f = m.parse_route(raw)
    assert (f.family, f.table, f.dst, f.dst_len, f.metric, f.oif) == (6, 1000, "fd00::20", 128, 1024, 5)
    assert (f.encap_type, f.tun_id, f.tun_dst, f.tun_ttl, f.tun_flags) == (
        m.LWTUNNEL_ENCAP_IP6, 5001 << 8, "2001:db8::2", 64, m.TUNNEL_KEY)


def test_fwmark_rule_and_via_route_decode_with_pyroute2_and_the_hand_parser():
    rule = fibmsg(m.message(m.RTM_NEWRULE, 0, 1, m.rule_body(6, "lo", None, 1000, 910, 78, fwmark=1000, ip_proto=58)))
    rule.decode()
    assert rule.get_attr("FRA_FWMARK") == 1000 and rule.get_attr("FRA_IP_PROTO") == 58
    assert rule.get_attr("FRA_IIFNAME") == "lo" and rule.get_attr("FRA_TUN_ID") is None
    assert (rule.get_attr("FRA_TABLE"), rule.get_attr("FRA_PRIORITY"), rule.get_attr("FRA_PROTOCOL")) == (1000, 910, 78)
    raw = m.message(m.RTM_NEWROUTE, 0, 1, m.route_body(4, 1000, "192.168.0.0", 16, 78, oif=7, gateway="10.0.0.10",
                                                        metric=50))
    fields = m.parse_route(raw)
    assert (fields.dst, fields.dst_len, fields.gateway, fields.oif, fields.metric) == ("192.168.0.0", 16, "10.0.0.10",
                                                                                       7, 50)
    route = rtmsg(raw)
    route.decode()
    assert route.get_attr("RTA_GATEWAY") == fields.gateway and route.get_attr("RTA_TABLE") == fields.table == 1000


# What iproute2 6.1 sends for `tc filter replace block 7637 pref 10 handle 5001 protocol all flower
# enc_key_id 1280256 action skbedit mark 1000` (captured with strace): tcmsg and attributes after nlmsghdr.
IPROUTE2_FLOWER_MARK = bytes.fromhex(
    "00000000ffffffff89130000d51d000000030a00"
    "0b000100666c6f7765720000"
    "4c000200"
    "08001a000013890038000300340001000c000100736b6265646974002400028018000200000000000000000003000000000000"
    "000000000008000500e80300000800160000000000"
)
# `tc filter del block 7637 pref 10 handle 5001 protocol all flower`
IPROUTE2_FLOWER_DEL = bytes.fromhex(
    "00000000ffffffff89130000d51d000000030a00" "0b000100666c6f7765720000" "0c0002000800160000000000"
)
# `tc qdisc add dev <ifindex 3> ingress_block 7637 clsact`
IPROUTE2_CLSACT = bytes.fromhex("0000000003000000" "0000ffff" "f1ffffff" "00000000"
                                "0b000100636c736163740000" "08000d00d51d0000")


def test_flower_mark_filter_is_byte_identical_to_iproute2s_and_decodes_with_pyroute2():
    from pyroute2.netlink.rtnl.tcmsg import tcmsg
    from pyroute2.netlink.rtnl.tcmsg.common_act import tca_act_prio

    body = m.flower_mark_body(7637, 10, 5001, 5001 << 8, 1000)
    assert body == IPROUTE2_FLOWER_MARK
    assert m.flower_mark_body(7637, 10, 5001, None, None) == IPROUTE2_FLOWER_DEL
    msg = tcmsg(m.message(m.RTM_NEWTFILTER, 0, 1, body))
    msg.decode()  # pyroute2 0.9.7 knows no flower: the header and the kind, the options stay raw
    assert (msg["index"], msg["handle"], msg["parent"]) == (-1, 5001, 7637)  # the block magic, the VSID, the block
    assert msg["info"] >> 16 == 10 and msg.get_attr("TCA_KIND") == "flower"
    # the action list in pyroute2's own action decoder (the same nesting as every classifier's)
    options = m._attrs(body, 20 + 12 + 4, len(body))
    acts = options[m.TCA_FLOWER_ACT]
    prio = tca_act_prio(struct.pack("=HH", 4 + len(acts), m.TCA_FLOWER_ACT) + acts)
    prio.decode()
    act = prio.get_attr("TCA_ACT_PRIO_1")
    assert act.get_attr("TCA_ACT_KIND") == "skbedit"
    assert act.get_attr("TCA_ACT_OPTIONS").get_attr("TCA_SKBEDIT_MARK") == 1000
    assert act.get_attr("TCA_ACT_OPTIONS").get_attr("TCA_SKBEDIT_PARMS")["action"] == m.TC_ACT_PIPE
    assert struct.unpack(">I", options[m.TCA_FLOWER_KEY_ENC_KEY_ID])[0] == 5001 << 8


def test_the_flower_parser_reads_back_what_is_encoded_and_skips_other_filters():
    raw = m.message(m.RTM_NEWTFILTER, 0, 1, m.flower_mark_body(7637, 10, 5001, 5001 << 8, 1000))
    assert m.parse_flower(raw) == m.FlowerFields(7637, 10, 5001, 5001 << 8, 1000)
    header = m.message(m.RTM_NEWTFILTER, 0, 1, m.flower_mark_body(7637, 10, 0, None, None)[:20]
                       + m.nla_pack(m.TCA_KIND, b"flower\0"))
    assert m.parse_flower(header) == m.FlowerFields(7637, 10, 0, None, None)  # a preference's header: no handle
    other = m.message(m.RTM_NEWTFILTER, 0, 1, m.flower_mark_body(7637, 10, 1, None, None)[:20]
                      + m.nla_pack(m.TCA_KIND, b"matchall\0"))
    assert m.parse_flower(other) is None


def test_clsact_with_a_shared_block_is_iproute2s_and_parses_back():
    from pyroute2.netlink.rtnl.tcmsg import tcmsg

    assert m.clsact_body(3, 7637) == IPROUTE2_CLSACT
    msg = tcmsg(m.message(m.RTM_NEWQDISC, 0, 1, IPROUTE2_CLSACT))
    msg.decode()
    assert (msg["index"], msg["parent"], msg.get_attr("TCA_KIND")) == (3, m.TC_H_CLSACT, "clsact")
    assert m.parse_qdisc(m.message(m.RTM_NEWQDISC, 0, 1, IPROUTE2_CLSACT)) == m.QdiscFields(3, "clsact", 7637)
    # the delete names no handle and no kind (a device whose clsact is gone answers either with EINVAL)
    assert m.parse_qdisc(m.message(m.RTM_DELQDISC, 0, 1, m.clsact_body(3, None))) == m.QdiscFields(3, "", 0)


def test_neighbour_parsed_by_hand_as_pyroute2_decodes_it():
    """Permanent and proxy entries, both families, with and without NDA_PROTOCOL and the attributes a dump
    adds (NDA_CACHEINFO, NDA_PROBES): the same fields as pyroute2's ndmsg."""
    extra = m.nla_pack(3, struct.pack("=IIII", 1, 2, 3, 4)) + m.nla_pack(4, struct.pack("=I", 0))
    bodies = [m.neigh_body(6, 7, "fe80::1", lladdr="02:00:5E:10:00:01", proxy=False, proto=78) + extra,
              m.neigh_body(4, 9, "169.254.0.1", lladdr="02:00:5e:10:00:01", proxy=False, proto=78),
              m.neigh_body(6, 12, "fd00:b::12", lladdr=None, proxy=True, proto=78),
              m.neigh_body(4, 3, "10.0.0.7", lladdr=None, proxy=True, proto=78)[: -8]]  # no NDA_PROTOCOL
    for body in bodies:
        raw = m.message(m.RTM_NEWNEIGH, 0, 1, body)
        theirs = ndmsg(raw)
        theirs.decode()
        ours = m.parse_neighbour(raw)
        assert (ours.ifindex, ours.state, ours.flags) == (theirs["ifindex"], theirs["state"], theirs["flags"])
        assert ours.dst == theirs.get_attr("NDA_DST")
        assert ours.lladdr == theirs.get_attr("NDA_LLADDR")
        assert ours.protocol == theirs.get_attr("NDA_PROTOCOL")


def _as_pyroute2_reads_it(raw: bytes) -> tuple:
    """A link's fields as observe read them through pyroute2 (LinkMessage) before it parsed them by hand."""
    msg = m.LinkMessage(raw)
    msg.decode()
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info else None
    data = info.get_attr("IFLA_INFO_DATA") if info else None
    table = md = None
    if data is not None and not isinstance(data, (str, bytes)):
        table = data.get_attr("IFLA_VRF_TABLE") if kind == "vrf" else None
        md = data.get_attr("IFLA_GRE_COLLECT_METADATA") or data.get_attr("IFLA_IP6GRE_COLLECT_METADATA")
    return (msg["index"], msg.get_attr("IFLA_IFNAME"), kind, msg.get_attr("IFLA_MASTER") or 0,
            msg.get_attr("IFLA_MTU"), msg.get_attr("IFLA_ADDRESS"), table, bool(md))


def test_link_parsed_by_hand_as_pyroute2_decodes_it():
    bodies = [
        m.link_body(ifindex=4, name="nvf-rd1", kind="vrf", info_data=m.vrf_info(1000), address="02:AA:00:00:00:01",
                    mtu=65575, up=True),
        m.link_body(ifindex=5, name="nvf-gre4", kind="gretap", info_data=m.collect_md_info(), mtu=1476,
                    address="02:00:5e:10:00:01"),
        m.link_body(ifindex=6, name="nvf-gre6", kind="ip6gretap", info_data=m.collect_md_info(), mtu=1448),
        m.link_body(ifindex=7, name="gre-plain", kind="ip6gretap", mtu=1448),
        m.link_body(ifindex=8, name="tap-b1", kind="veth", master=4, mtu=1500, address="02:00:00:00:0b:01"),
        m.link_body(ifindex=1, name="lo", mtu=65536, address="00:00:00:00:00:00"),
        m.link_body(ifindex=9, name="nvf-other", kind="vrf"),  # a VRF without its table (not one of ours)
    ]
    for body in bodies:
        raw = m.message(m.RTM_NEWLINK, 0, 1, body)
        f = m.parse_link(raw)
        assert (f.index, f.name, f.kind, f.master, f.mtu, f.address, f.vrf_table, f.collect_md) == \
            _as_pyroute2_reads_it(raw), body


@pytest.mark.parametrize(("family", "dst", "plen", "pa"), [
    (4, "10.64.0.1", 32, "198.51.97.1"), (6, "fd00::20", 128, "2001:db8::2"), (4, "10.0.0.7", 32, "2001:db8::1:0:0:1"),
])
def test_an_encap_route_read_back_equals_the_one_built_from_its_text(family, dst, plen, pa):
    raw = m.message(m.RTM_NEWROUTE, 0, 1, m.route_body(
        family, 1000, dst, plen, 78, flags=m.RTNH_F_ONLINK, metric=1024, oif=5,
        gateway="169.254.0.1" if family == 4 else "fe80::1",
        extra=m.tunnel_encap(6 if ":" in pa else 4, 5001 << 8, pa, 64)))
    read = observe._route(m.parse_route(raw), {5: "nvf-gre4"})
    built = EncapRoute(1000, f"{dst}/{plen}", 5001, pa, "nvf-gre4", 64, 1024)
    assert read == built and hash(read) == hash(built) and read.key == built.key
    assert (read.family, read.pa_family) == (built.family, built.pa_family)


@pytest.mark.parametrize(("kind", "local", "remote", "key"), [
    ("gre", "203.0.113.2", "198.18.0.9", 4711), ("gre", "203.0.113.2", "198.18.0.9", None),
    ("ip6gre", "2001:db8::2", "2001:db8:9::9", 0xFFFFFFFF),
])
def test_a_gre_sites_tunnel_encodes_as_pyroute2_decodes_it_and_reads_back(kind, local, remote, key):
    raw = m.message(m.RTM_NEWLINK, 0, 1, m.link_body(ifindex=12, name="nvf-s3e82", kind=kind, master=4,
                                                      info_data=m.gre_info(local, remote, key)))
    msg = ifinfmsg(raw)
    msg.decode()
    data = msg.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
    prefix = "IFLA_GRE" if kind == "gre" else "IFLA_IP6GRE"
    assert (data.get_attr(f"{prefix}_LOCAL"), data.get_attr(f"{prefix}_REMOTE")) == (local, remote)
    assert data.get_attr(f"{prefix}_IKEY") == data.get_attr(f"{prefix}_OKEY") == (key or 0)
    flags = data.get_attr(f"{prefix}_IFLAGS")
    want = m.GRE_KEY if key is not None else 0
    if kind == "ip6gre":  # pyroute2 0.9.7 reads ip6gre's flags in host order; the kernel's are big-endian
        want = struct.unpack("=H", struct.pack("!H", want))[0]
    assert flags == data.get_attr(f"{prefix}_OFLAGS") == want
    assert data.get_attr(f"{prefix}_TTL") == 64
    if kind == "ip6gre":  # no Destination Options header with an encapsulation limit
        assert data.get_attr("IFLA_IP6GRE_FLAGS") == m.IP6_TNL_F_IGN_ENCAP_LIMIT
    f = m.parse_link(raw)
    assert (f.kind, f.master, f.gre, f.collect_md) == (kind, 4, (local, remote, key), False)
    # the NVGRE devices are flow-based: no ends, never taken for a site's tunnel
    assert m.parse_link(m.message(m.RTM_NEWLINK, 0, 1, m.link_body(
        ifindex=5, name="nvf-gre4", kind="gretap", info_data=m.collect_md_info()))).gre is None


def _encap_route_message(dst: str, pa: str, vsid: int, encap_type: int | None = None, metric: int = 1024,
                         ttl: int = 64) -> bytes:
    raw = m.message(m.RTM_NEWROUTE, 0, 1, m.route_body(
        4, 1000, dst, 32, 78, flags=m.RTNH_F_ONLINK, metric=metric, oif=5, gateway="169.254.0.1",
        extra=m.tunnel_encap(4, vsid << 8, pa, ttl)))
    if encap_type is not None:  # the same bytes with another RTA_ENCAP_TYPE value
        at = raw.rindex(struct.pack("=HH", 6, m.RTA_ENCAP_TYPE))
        raw = raw[:at + 4] + struct.pack("=H", encap_type) + raw[at + 6:]
    return raw


def _walked(raw: bytes) -> m.RouteFields:
    return m._walk_route(raw)[0]


def test_routes_of_one_shape_read_by_its_layout_give_what_the_walk_gives():
    first = _encap_route_message("10.1.0.1", "198.51.100.1", 5001)
    assert m.parse_route(first) == _walked(first)
    # the layout learned from the first: every field of the next ones of its shape is theirs, not the first's
    for dst, pa, vsid, metric, ttl in [("10.1.0.2", "198.51.100.7", 77, 1024, 64),
                                       ("10.200.3.4", "203.0.113.250", (1 << 24) - 1, 7, 3)]:
        raw = _encap_route_message(dst, pa, vsid, metric=metric, ttl=ttl)
        assert len(raw) == len(first)
        fields = m.parse_route(raw)
        assert fields == _walked(raw)
        assert (fields.dst, fields.tun_dst, fields.tun_id, fields.metric, fields.tun_ttl) == (
            dst, pa, vsid << 8, metric, ttl)


def test_a_message_of_the_same_length_with_other_headers_or_encapsulation_is_walked():
    m.parse_route(_encap_route_message("10.1.0.1", "198.51.100.1", 5001))
    # not an IP encapsulation (MPLS's number): its nested attributes are not read, as the walk does not
    other_type = _encap_route_message("10.1.0.3", "198.51.100.3", 5001, encap_type=1)
    assert m.parse_route(other_type) == _walked(other_type)
    assert m.parse_route(other_type).tun_id is None
    # the same length, an attribute of another type in the gateway's place (RTA_PREFSRC)
    plain = _encap_route_message("10.1.0.4", "198.51.100.4", 5001)
    at = plain.index(struct.pack("=HH", 8, m.RTA_GATEWAY))
    other_headers = plain[:at] + struct.pack("=HH", 8, m.RTA_PREFSRC) + plain[at + 4:]
    fields = m.parse_route(other_headers)
    assert fields == _walked(other_headers)
    assert (fields.gateway, fields.prefsrc) == (None, "169.254.0.1")


def test_an_encap_route_of_our_protocol_without_a_vsid_is_not_ours_to_read():
    raw = _encap_route_message("10.1.0.9", "198.51.100.9", 0)
    assert observe._route(m.parse_route(raw), {5: "nvf-gre4"}) is None
