"""Netlink wire format for the objects vnet owns, including what pyroute2 0.9.7 cannot express.

Two halves:
- *Encoders* (`encode_*`): hand-packed rtnetlink requests. The writer sends tens of thousands of them
  per batch; building them with struct is ~50x cheaper than pyroute2's generic request machinery, which
  matters in the emulated VM (docs/lab.md), and it lets `apply` pipeline them in one buffer.
- *Decoders*: pyroute2 message classes with the additions 0.9.7 lacks, used by `observe` on dumps:
  `RouteMessage` decodes RTA_ENCAP of type LWTUNNEL_ENCAP_IP / LWTUNNEL_ENCAP_IP6 (0.9.7 leaves it
  undecoded and dies encoding it), `LinkMessage` decodes IFLA_GRE_COLLECT_METADATA on ip6gretap
  (`ip6gretap external`). They are subclasses: nothing in pyroute2's own tables is modified.

Attribute numbers are from include/uapi/linux/{lwtunnel,if_tunnel,rtnetlink,neighbour,fib_rules,
if_link}.h; the kernel tests cross-check them against what iproute2 encodes (tests/kernel/test_vnet_*).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import NamedTuple

from pyroute2.netlink import nla
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from nvfabric.bgp.mac import Mac

# --- netlink header ---------------------------------------------------------------------------------
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLMSGERR_ATTR_MSG = 1  # extended ack: the kernel's error text
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFA_FLAGS = 8  # u32, the flags beyond ifa_flags' 8 bits
IFA_F_NODAD = 0x02
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34
RTM_NEWQDISC, RTM_DELQDISC, RTM_GETQDISC = 36, 37, 38
RTM_NEWTFILTER, RTM_DELTFILTER, RTM_GETTFILTER = 44, 45, 46

# --- links (if_link.h, if_tunnel.h) -------------------------------------------------------------------
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_MASTER = 10
IFLA_LINKINFO = 18
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
IFLA_VRF_TABLE = 1
IFLA_GRE_COLLECT_METADATA = 18  # if_tunnel.h: shared by gretap and ip6gretap
IFLA_XFRM_IF_ID = 2  # if_link.h: IFLA_XFRM_LINK 1, IFLA_XFRM_IF_ID 2
# if_tunnel.h, a plain (IP in) GRE tunnel's: flags and keys are big-endian, addresses 4 or 16 bytes
IFLA_GRE_IFLAGS, IFLA_GRE_OFLAGS, IFLA_GRE_IKEY, IFLA_GRE_OKEY, IFLA_GRE_LOCAL, IFLA_GRE_REMOTE = 2, 3, 4, 5, 6, 7
IFLA_GRE_TTL = 8
IFLA_GRE_FLAGS = 13  # ip6gre's u32 flags
GRE_KEY = 0x2000  # the K bit of GRE_FLAGS (as in the header: network order on the wire)
IP6_TNL_F_IGN_ENCAP_LIMIT = 0x1  # no Destination Options header (RFC 2473 encapsulation limit) on ip6gre
TUNNEL_TTL = 64
IFF_UP = 0x1

# --- routes (rtnetlink.h, lwtunnel.h) -----------------------------------------------------------------
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_PREFSRC = 7
RTA_TABLE = 15
RTA_ENCAP_TYPE = 21
RTA_ENCAP = 22
RT_TABLE_COMPAT = 252  # rtm_table when the real id (RTA_TABLE) does not fit in 8 bits
RTN_UNICAST = 1
RTN_UNREACHABLE = 7
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_NOWHERE = 255  # in a delete request: match a route of any scope (what `ip route del` sends)
RTNH_F_ONLINK = 0x4

LWTUNNEL_ENCAP_IP = 2
LWTUNNEL_ENCAP_IP6 = 4
# enum lwtunnel_ip_t / lwtunnel_ip6_t: the same numbers for both families
LWTUNNEL_IP_ID = 1  # be64 tunnel id; GRE uses its low 32 bits as the key
LWTUNNEL_IP_DST = 2
LWTUNNEL_IP_SRC = 3
LWTUNNEL_IP_TTL = 4  # LWTUNNEL_IP6_HOPLIMIT for IPv6
LWTUNNEL_IP_TOS = 5  # LWTUNNEL_IP6_TC for IPv6
LWTUNNEL_IP_FLAGS = 6  # be16 tunnel flags
LWTUNNEL_IP_PAD = 7
TUNNEL_KEY = 0x04  # the `key` flag: without it GRE sends no key at all

# --- neighbours (neighbour.h) ---------------------------------------------------------------------------
NDA_DST = 1
NDA_LLADDR = 2
NDA_PROTOCOL = 12  # owner tag, since Linux 5.2
NUD_PERMANENT = 0x80
NTF_PROXY = 0x08

# --- rules (fib_rules.h) --------------------------------------------------------------------------------
FRA_IIFNAME = 3
FRA_PRIORITY = 6
FRA_FWMARK = 10
FRA_TUN_ID = 12
FRA_TABLE = 15
FRA_PROTOCOL = 21  # owner tag, since Linux 4.17
FRA_IP_PROTO = 22  # since Linux 4.17
FR_ACT_TO_TBL = 1
FR_ACT_UNREACHABLE = 7
RT_TABLE_LOCAL = 255
RTPROT_KERNEL = 2

# --- tc (rtnetlink.h, pkt_sched.h, pkt_cls.h, tc_act/tc_skbedit.h) ------------------------------------------
TCA_KIND = 1
TCA_OPTIONS = 2
TCA_INGRESS_BLOCK = 13
TC_H_CLSACT = 0xFFFFFFF1  # the parent of a clsact qdisc (TC_H_INGRESS)
TC_H_CLSACT_HANDLE = 0xFFFF0000  # TC_H_MAKE(TC_H_CLSACT, 0): the handle `tc qdisc add ... clsact` gives it
TCM_IFINDEX_MAGIC_BLOCK = 0xFFFFFFFF  # tcm_ifindex of a filter on a shared block (tcm_parent is the block)
ETH_P_ALL = 0x0003
TCA_FLOWER_ACT = 3
TCA_FLOWER_FLAGS = 22
TCA_FLOWER_KEY_ENC_KEY_ID = 26  # be32: the tunnel key (GRE key) of the packet's metadata
TCA_ACT_KIND = 1
TCA_ACT_OPTIONS = 2
TCA_SKBEDIT_PARMS = 2
TCA_SKBEDIT_MARK = 5
TC_ACT_PIPE = 3  # skbedit's default control action: the packet goes on to the next action / the stack
NLA_F_NESTED = 0x8000

_HDR = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NDMSG = struct.Struct("=BBHiHBB")
_IFINFO = struct.Struct("=BBHiII")
_IFADDR = struct.Struct("=BBBBI")
_FIBHDR = struct.Struct("=BBBBBBBBI")
_TCMSG = struct.Struct("=BxxxIIII")  # family, ifindex (u32 here: the block magic is 0xffffffff), handle, parent, info
_TC_GEN = struct.Struct("=IIiii")  # index, capab, action, refcnt, bindcnt

FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}


def nla_pack(kind: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes (NLA_ALIGN)."""
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length & 3)


def _u8(v: int) -> bytes:
    return struct.pack("=B", v)


def _u32(v: int) -> bytes:
    return struct.pack("=I", v)


def _ip(address: str) -> bytes:
    # inet_pton is ~20x cheaper than ipaddress; callers pass normalised addresses
    return socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)


def route_dump_body(family: int, proto: int) -> bytes:
    """An RTM_GETROUTE dump request's rtmsg for one family and protocol: with strict dump checking the kernel
    filters by protocol, so others' routes never reach us."""
    return _RTMSG.pack(FAMILY[family], 0, 0, 0, 0, proto, 0, 0, 0)


def message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return _HDR.pack(16 + len(body), kind, flags | NLM_F_REQUEST, seq, 0) + body


def tunnel_encap(family: int, tun_id: int, dst: str, ttl: int, key: bool = True) -> bytes:
    """RTA_ENCAP_TYPE + RTA_ENCAP for `encap ip|ip6 id ID dst PA ttl|hoplimit N [key]`.

    The id is big-endian 64 bit and the flags big-endian 16 bit, as iproute2 sends them (htonll, and
    TUNNEL_KEY being __cpu_to_be16(0x04))."""
    inner = (
        nla_pack(LWTUNNEL_IP_ID, struct.pack(">Q", tun_id))
        + nla_pack(LWTUNNEL_IP_DST, _ip(dst))
        + nla_pack(LWTUNNEL_IP_TTL, _u8(ttl))
        + (nla_pack(LWTUNNEL_IP_FLAGS, struct.pack(">H", TUNNEL_KEY)) if key else b"")
    )
    encap_type = LWTUNNEL_ENCAP_IP if family == 4 else LWTUNNEL_ENCAP_IP6
    return nla_pack(RTA_ENCAP_TYPE, struct.pack("=H", encap_type)) + nla_pack(RTA_ENCAP | 0x8000, inner)


def route_body(
    family: int,
    table: int,
    dst: str,
    dst_len: int,
    proto: int,
    *,
    rtype: int = RTN_UNICAST,
    scope: int = RT_SCOPE_UNIVERSE,
    flags: int = 0,
    metric: int | None = None,
    oif: int | None = None,
    gateway: str | None = None,
    prefsrc: str | None = None,
    extra: bytes = b"",
) -> bytes:
    head = _RTMSG.pack(
        FAMILY[family], dst_len, 0, 0, table if table < 256 else RT_TABLE_COMPAT, proto, scope, rtype, flags
    )
    attrs = nla_pack(RTA_TABLE, _u32(table))
    if dst_len:
        attrs += nla_pack(RTA_DST, _ip(dst))
    if metric is not None:
        attrs += nla_pack(RTA_PRIORITY, _u32(metric))
    if oif is not None:
        attrs += nla_pack(RTA_OIF, _u32(oif))
    if gateway is not None:
        attrs += nla_pack(RTA_GATEWAY, _ip(gateway))
    if prefsrc is not None:
        attrs += nla_pack(RTA_PREFSRC, _ip(prefsrc))
    return head + attrs + extra


def neigh_body(family: int, ifindex: int, dst: str, *, lladdr: str | None, proxy: bool, proto: int) -> bytes:
    head = _NDMSG.pack(FAMILY[family], 0, 0, ifindex, NUD_PERMANENT, NTF_PROXY if proxy else 0, 0)
    attrs = nla_pack(NDA_DST, _ip(dst)) + nla_pack(NDA_PROTOCOL, _u8(proto))
    if lladdr is not None:
        attrs += nla_pack(NDA_LLADDR, Mac(lladdr).packed)
    return head + attrs


def addr_body(family: int, ifindex: int, address: str, prefixlen: int, *, nodad: bool = False) -> bytes:
    """An interface address (what `ip addr add|del ADDRESS/LEN dev D [nodad]` sends): IFA_LOCAL and
    IFA_ADDRESS both the address (no peer), scope global."""
    flags = IFA_F_NODAD if nodad else 0
    raw = _ip(address)
    attrs = nla_pack(IFA_LOCAL, raw) + nla_pack(IFA_ADDRESS, raw)
    if flags:
        attrs += nla_pack(IFA_FLAGS, _u32(flags))
    return _IFADDR.pack(FAMILY[family], prefixlen, flags, RT_SCOPE_UNIVERSE, ifindex) + attrs


def rule_body(family: int, iifname: str | None, tun_id: int | None, table: int, priority: int, proto: int,
              *, fwmark: int | None = None, ip_proto: int | None = None, action: int = FR_ACT_TO_TBL) -> bytes:
    """A rule; `table` 0 with another action (unreachable) carries no table, `proto` 0 no owner (a delete
    then matches any owner's rule)."""
    head = _FIBHDR.pack(FAMILY[family], 0, 0, 0, table if table < 256 else 0, proto, 0, action, 0)
    # (byte 5 of fib_rule_hdr is res1; the protocol goes in FRA_PROTOCOL, so zero it)
    head = head[:5] + b"\0" + head[6:]
    attrs = b""
    if iifname is not None:
        attrs += nla_pack(FRA_IIFNAME, iifname.encode() + b"\0")
    if tun_id is not None:
        attrs += nla_pack(FRA_TUN_ID, struct.pack(">Q", tun_id))
    if fwmark is not None:
        attrs += nla_pack(FRA_FWMARK, _u32(fwmark))  # the kernel takes mask 0xffffffff when none is given
    if ip_proto is not None:
        attrs += nla_pack(FRA_IP_PROTO, _u8(ip_proto))
    return head + attrs + (
        (nla_pack(FRA_TABLE, _u32(table)) if table else b"")
        + nla_pack(FRA_PRIORITY, _u32(priority))
        + (nla_pack(FRA_PROTOCOL, _u8(proto)) if proto else b"")
    )


def link_body(
    *,
    ifindex: int = 0,
    name: str | None = None,
    kind: str | None = None,
    info_data: bytes = b"",
    address: str | None = None,
    mtu: int | None = None,
    master: int | None = None,
    up: bool | None = None,
) -> bytes:
    flags = IFF_UP if up else 0
    change = IFF_UP if up is not None else 0
    attrs = b""
    if name is not None:
        attrs += nla_pack(IFLA_IFNAME, name.encode() + b"\0")
    if address is not None:
        attrs += nla_pack(IFLA_ADDRESS, Mac(address).packed)
    if mtu is not None:
        attrs += nla_pack(IFLA_MTU, _u32(mtu))
    if master is not None:
        attrs += nla_pack(IFLA_MASTER, _u32(master))
    if kind is not None:
        linkinfo = nla_pack(IFLA_INFO_KIND, kind.encode())
        if info_data:
            linkinfo += nla_pack(IFLA_INFO_DATA | 0x8000, info_data)
        attrs += nla_pack(IFLA_LINKINFO | 0x8000, linkinfo)
    return _IFINFO.pack(socket.AF_UNSPEC, 0, 0, ifindex, flags, change) + attrs


def vrf_info(table: int) -> bytes:
    return nla_pack(IFLA_VRF_TABLE, _u32(table))


def xfrm_info(if_id: int) -> bytes:
    return nla_pack(IFLA_XFRM_IF_ID, _u32(if_id))


def gre_info(local: str, remote: str, key: int | None) -> bytes:
    """A point-to-point IP-in-GRE tunnel (`gre`, `ip6gre` for IPv6 ends): `local`, `remote`, the key both ways
    when given (else keyless packets only), TTL 64 (not inherited from the inner packet), and on ip6gre no
    encapsulation limit option (`encaplimit none`): a site's router need not parse a Destination Options
    header. Every attribute every time: a change (RTM_NEWLINK on the device) resets what it leaves out."""
    a, b = socket.inet_pton(_af(local), local), socket.inet_pton(_af(remote), remote)
    flags = struct.pack("!H", GRE_KEY if key is not None else 0)
    keys = struct.pack("!I", key or 0)
    out = (nla_pack(IFLA_GRE_LOCAL, a) + nla_pack(IFLA_GRE_REMOTE, b) + nla_pack(IFLA_GRE_IFLAGS, flags)
           + nla_pack(IFLA_GRE_OFLAGS, flags) + nla_pack(IFLA_GRE_IKEY, keys) + nla_pack(IFLA_GRE_OKEY, keys)
           + nla_pack(IFLA_GRE_TTL, _u8(TUNNEL_TTL)))
    if len(a) == 16:
        out += nla_pack(IFLA_GRE_FLAGS, _u32(IP6_TNL_F_IGN_ENCAP_LIMIT))
    return out


def _af(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def collect_md_info() -> bytes:
    """`external`: a flow-based (collect_md) tunnel whose key and remote come from each route's encap."""
    return nla_pack(IFLA_GRE_COLLECT_METADATA, b"")


def dump_request(kind: int, seq: int, family: int = socket.AF_UNSPEC, body: bytes | None = None) -> bytes:
    if body is None:
        body = struct.pack("=B3x", family)
    return message(kind, NLM_F_DUMP, seq, body)


# --- tc: the clsact hook and flower filters (pyroute2 0.9.7 has no flower) ----------------------------------
# The bytes are iproute2 6.1's (`tc qdisc add dev D ingress_block B clsact`, `tc filter replace block B pref P
# handle H protocol all flower enc_key_id K action skbedit mark M`), attribute by attribute (tested).


def _asciiz(text: str) -> bytes:
    return text.encode() + b"\0"


def filter_info(pref: int) -> int:
    """tcm_info of a filter: TC_H_MAKE(pref << 16, protocol), the protocol in network order (`protocol all`)."""
    return (pref << 16) | socket.htons(ETH_P_ALL)


def clsact_body(ifindex: int, block: int | None) -> bytes:
    """A clsact qdisc on a device; `block`: its shared ingress block (None: the delete). The delete names
    neither handle nor kind: a device whose clsact is gone keeps a placeholder ingress qdisc, which answers a
    named handle or kind with EINVAL, and no name with ENOENT ("already gone")."""
    if block is None:
        return _TCMSG.pack(socket.AF_UNSPEC, ifindex, 0, TC_H_CLSACT, 0)
    attrs = nla_pack(TCA_KIND, _asciiz("clsact"))
    if block:
        attrs += nla_pack(TCA_INGRESS_BLOCK, _u32(block))
    return _TCMSG.pack(socket.AF_UNSPEC, ifindex, TC_H_CLSACT_HANDLE, TC_H_CLSACT, 0) + attrs


def flower_mark_body(block: int, pref: int, handle: int, key_id: int | None, mark: int | None) -> bytes:
    """`flower enc_key_id KEY_ID action skbedit mark MARK` on a shared block; key_id None: the delete."""
    head = _TCMSG.pack(socket.AF_UNSPEC, TCM_IFINDEX_MAGIC_BLOCK, handle, block, filter_info(pref))
    flags = nla_pack(TCA_FLOWER_FLAGS, _u32(0))
    if key_id is None or mark is None:
        return head + nla_pack(TCA_KIND, _asciiz("flower")) + nla_pack(TCA_OPTIONS, flags)
    skbedit = (nla_pack(TCA_SKBEDIT_PARMS, _TC_GEN.pack(0, 0, TC_ACT_PIPE, 0, 0))
               + nla_pack(TCA_SKBEDIT_MARK, _u32(mark)))
    action = nla_pack(TCA_ACT_KIND, _asciiz("skbedit")) + nla_pack(TCA_ACT_OPTIONS | NLA_F_NESTED, skbedit)
    options = (nla_pack(TCA_FLOWER_KEY_ENC_KEY_ID, struct.pack(">I", key_id))
               + nla_pack(TCA_FLOWER_ACT, nla_pack(1, action))  # actions are numbered from 1: their order
               + flags)
    return head + nla_pack(TCA_KIND, _asciiz("flower")) + nla_pack(TCA_OPTIONS, options)


def tc_dump_body(ifindex: int = 0, parent: int = 0) -> bytes:
    return _TCMSG.pack(socket.AF_UNSPEC, ifindex, 0, parent, 0)


@dataclass(frozen=True)
class QdiscFields:
    ifindex: int
    kind: str
    ingress_block: int  # 0: none


@dataclass(frozen=True)
class FlowerFields:
    """One flower filter of a dump (handle 0: the header message of a pref, which has no options)."""

    block: int
    pref: int
    handle: int
    key_id: int | None  # TCA_FLOWER_KEY_ENC_KEY_ID
    mark: int | None  # the first skbedit action's mark


def _tc_head(msg: bytes) -> tuple[int, int, int, int, dict[int, bytes]]:
    _family, ifindex, handle, parent, info = _TCMSG.unpack_from(msg, 16)
    return ifindex, handle, parent, info, _attrs(msg, 16 + _TCMSG.size, len(msg))


def parse_qdisc(msg: bytes) -> QdiscFields:
    ifindex, _handle, _parent, _info, a = _tc_head(msg)
    block = struct.unpack("=I", a[TCA_INGRESS_BLOCK])[0] if TCA_INGRESS_BLOCK in a else 0
    return QdiscFields(ifindex, a.get(TCA_KIND, b"").rstrip(b"\0").decode(), block)


def parse_flower(msg: bytes) -> FlowerFields | None:
    """A filter of a shared block's dump, or None when it is not a flower filter."""
    ifindex, handle, parent, info, a = _tc_head(msg)
    if a.get(TCA_KIND, b"").rstrip(b"\0") != b"flower":
        return None
    key_id = mark = None
    options = _attrs(a[TCA_OPTIONS], 0, len(a[TCA_OPTIONS])) if TCA_OPTIONS in a else {}
    if TCA_FLOWER_KEY_ENC_KEY_ID in options:
        key_id = struct.unpack(">I", options[TCA_FLOWER_KEY_ENC_KEY_ID])[0]
    acts = options.get(TCA_FLOWER_ACT, b"")
    for _prio, act in sorted(_attrs(acts, 0, len(acts)).items()):
        fields = _attrs(act, 0, len(act))
        if fields.get(TCA_ACT_KIND, b"").rstrip(b"\0") == b"skbedit" and TCA_ACT_OPTIONS in fields:
            opts = _attrs(fields[TCA_ACT_OPTIONS], 0, len(fields[TCA_ACT_OPTIONS]))
            if TCA_SKBEDIT_MARK in opts:
                mark = struct.unpack("=I", opts[TCA_SKBEDIT_MARK])[0]
                break
    block = parent if ifindex == TCM_IFINDEX_MAGIC_BLOCK else 0
    return FlowerFields(block, info >> 16, handle, key_id, mark)


# --- decoders: pyroute2 message classes with the missing pieces ----------------------------------------


# pyroute2 caches each class's compiled nla_map in name-mangled class attributes set on first decode;
# a subclass would inherit its parent's cache (and ignore its own nla_map) if the parent decoded first.
# Every class below starts with its own empty cache.
_FRESH = {"_nlmsg_base__compiled_nla": False, "_nlmsg_base__t_nla_map": None, "_nlmsg_base__r_nla_map": None}


class ip_encap_info(nla):
    """RTA_ENCAP of type LWTUNNEL_ENCAP_IP (lwtunnel.h enum lwtunnel_ip_t)."""

    prefix = "LWTUNNEL_IP_"
    __slots__ = ()
    nla_map = (
        (0, "LWTUNNEL_IP_UNSPEC", "none"),
        (LWTUNNEL_IP_ID, "LWTUNNEL_IP_ID", "be64"),
        (LWTUNNEL_IP_DST, "LWTUNNEL_IP_DST", "ip4addr"),
        (LWTUNNEL_IP_SRC, "LWTUNNEL_IP_SRC", "ip4addr"),
        (LWTUNNEL_IP_TTL, "LWTUNNEL_IP_TTL", "uint8"),
        (LWTUNNEL_IP_TOS, "LWTUNNEL_IP_TOS", "uint8"),
        (LWTUNNEL_IP_FLAGS, "LWTUNNEL_IP_FLAGS", "be16"),
        (LWTUNNEL_IP_PAD, "LWTUNNEL_IP_PAD", "hex"),
    )


class ip6_encap_info(nla):
    """RTA_ENCAP of type LWTUNNEL_ENCAP_IP6 (lwtunnel.h enum lwtunnel_ip6_t)."""

    prefix = "LWTUNNEL_IP6_"
    __slots__ = ()
    nla_map = (
        (0, "LWTUNNEL_IP6_UNSPEC", "none"),
        (LWTUNNEL_IP_ID, "LWTUNNEL_IP6_ID", "be64"),
        (LWTUNNEL_IP_DST, "LWTUNNEL_IP6_DST", "ip6addr"),
        (LWTUNNEL_IP_SRC, "LWTUNNEL_IP6_SRC", "ip6addr"),
        (LWTUNNEL_IP_TTL, "LWTUNNEL_IP6_HOPLIMIT", "uint8"),
        (LWTUNNEL_IP_TOS, "LWTUNNEL_IP6_TC", "uint8"),
        (LWTUNNEL_IP_FLAGS, "LWTUNNEL_IP6_FLAGS", "be16"),
        (LWTUNNEL_IP_PAD, "LWTUNNEL_IP6_PAD", "hex"),
    )


class RouteMessage(rtmsg):
    """pyroute2's rtmsg plus the IP/IP6 tunnel encaps (its `encap_info` looks types up in `encaps`)."""

    __slots__ = ()
    encaps = {**rtmsg.encaps, LWTUNNEL_ENCAP_IP: ip_encap_info, LWTUNNEL_ENCAP_IP6: ip6_encap_info}
    locals().update(_FRESH)



class _ip6gre_data(ifinfmsg.ifinfo.ip6gre_data):
    """0.9.7's ip6gre_data stops at ENCAP_DPORT (17); the kernel has had COLLECT_METADATA (18) since 4.9."""

    nla_map = ifinfmsg.ifinfo.ip6gre_data.nla_map + (
        ("IFLA_IP6GRE_COLLECT_METADATA", "flag"),
        ("IFLA_IP6GRE_IGNORE_DF", "uint8"),
        ("IFLA_IP6GRE_FWMARK", "uint32"),
    )
    locals().update(_FRESH)



class _ifinfo(ifinfmsg.ifinfo):
    data_map = {**ifinfmsg.ifinfo.data_map, "ip6gretap": _ip6gre_data}
    locals().update(_FRESH)



class LinkMessage(ifinfmsg):
    """pyroute2's ifinfmsg whose link info decodes `ip6gretap external`."""

    nla_map = tuple(("IFLA_LINKINFO", "_ifinfo") if e[0] == "IFLA_LINKINFO" else e for e in ifinfmsg.nla_map)
    _ifinfo = _ifinfo
    locals().update(_FRESH)


# --- the hot path: one struct.pack per remote-CA route --------------------------------------------------
_ENCAP_ROUTE: dict[tuple[int, int], struct.Struct] = {}
_KEY_FLAG = struct.pack(">H", TUNNEL_KEY)


def _encap_route_struct(family: int, pa_family: int) -> struct.Struct:
    a = "4s" if family == 4 else "16s"
    p = "4s" if pa_family == 4 else "16s"
    return struct.Struct(
        "=IHHII"  # nlmsghdr
        "BBBBBBBBI"  # rtmsg
        "HHI" "HH" + a + "HHI" "HHI" "HH" + a +  # RTA_TABLE, RTA_DST, RTA_PRIORITY, RTA_OIF, RTA_GATEWAY
        "HHH2x" "HH"  # RTA_ENCAP_TYPE, RTA_ENCAP header
        "HH8s" "HH" + p + "HHB3x" "HH2s2x"  # ID, DST, TTL, FLAGS
    )


def encap_route(
    seq: int, flags: int, family: int, table: int, dst: str, dst_len: int, proto: int, metric: int, oif: int,
    gateway: str, pa_family: int, tun_id: int, pa: str, ttl: int,
) -> bytes:
    """The whole RTM_NEWROUTE of `route_body(..., extra=tunnel_encap(...))` in one pack: the same bytes
    (tested), ~5x cheaper; it is most of the writer's CPU time at 100k routes."""
    key = (family, pa_family)
    st = _ENCAP_ROUTE.get(key) or _ENCAP_ROUTE.setdefault(key, _encap_route_struct(family, pa_family))
    alen, plen = (4 if family == 4 else 16), (4 if pa_family == 4 else 16)
    encap_len = 4 + 12 + 4 + plen + 8 + 8
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    return st.pack(
        st.size, RTM_NEWROUTE, flags | NLM_F_REQUEST, seq, 0,
        FAMILY[family], dst_len, 0, 0, table if table < 256 else RT_TABLE_COMPAT, proto, RT_SCOPE_UNIVERSE,
        RTN_UNICAST, RTNH_F_ONLINK,
        8, RTA_TABLE, table,
        4 + alen, RTA_DST, socket.inet_pton(af, dst),
        8, RTA_PRIORITY, metric,
        8, RTA_OIF, oif,
        4 + alen, RTA_GATEWAY, socket.inet_pton(af, gateway),
        6, RTA_ENCAP_TYPE, LWTUNNEL_ENCAP_IP if pa_family == 4 else LWTUNNEL_ENCAP_IP6,
        encap_len, RTA_ENCAP | 0x8000,
        12, LWTUNNEL_IP_ID, tun_id.to_bytes(8, "big"),
        4 + plen, LWTUNNEL_IP_DST, socket.inet_pton(socket.AF_INET if pa_family == 4 else socket.AF_INET6, pa),
        5, LWTUNNEL_IP_TTL, ttl,
        6, LWTUNNEL_IP_FLAGS, _KEY_FLAG,
    )


class RouteFields(NamedTuple):
    """What `observe` needs of one route message. Immutable like a frozen dataclass, but built ~8x cheaper
    (no object.__setattr__ per field): a restart reads one per remote CA, 100,000 of them."""

    family: int  # 4 or 6
    table: int
    dst: str | None
    dst_len: int
    proto: int
    rtype: int
    metric: int
    oif: int | None
    encap_type: int | None
    tun_id: int | None
    tun_dst: str | None
    tun_ttl: int | None
    tun_flags: int | None
    gateway: str | None = None
    prefsrc: str | None = None


def _attrs(data: bytes, offset: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while offset + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[offset + 4 : offset + length]  # without NLA_F_NESTED / NET_BYTEORDER
        offset += (length + 3) & ~3
    return out


@dataclass(frozen=True)
class AddressFields:
    """What `observe` needs of one RTM_NEWADDR message."""

    family: int  # 4 or 6
    ifindex: int
    address: str
    prefixlen: int
    scope: int


def parse_address_fields(msg: bytes) -> AddressFields | None:
    """An RTM_NEWADDR message -> the interface's own address and what else observe needs; None without one."""
    family, prefixlen, _flags, scope, index = _IFADDR.unpack_from(msg, 16)
    attrs = _attrs(msg, 16 + _IFADDR.size, len(msg))
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)  # IPv4 point-to-point: IFA_LOCAL is ours
    if not raw or len(raw) not in (4, 16):
        return None
    return AddressFields(4 if family == socket.AF_INET else 6, index, _ntop(raw), prefixlen, scope)


def parse_address(msg: bytes) -> tuple[str, int] | None:
    """An RTM_NEWADDR message -> (the interface's own address, its prefix length); None without one."""
    fields = parse_address_fields(msg)
    return (fields.address, fields.prefixlen) if fields is not None else None


def _ntop(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


@dataclass(frozen=True)
class LinkFields:
    """What `observe` needs of one RTM_NEWLINK message."""

    index: int
    name: str
    kind: str | None  # IFLA_INFO_KIND
    master: int  # 0: none
    mtu: int | None
    address: str | None  # lower-case, colon-separated (pyroute2's text)
    vrf_table: int | None  # a VRF's table
    collect_md: bool  # a GRE device in external mode (`gretap external`)
    if_id: int | None = None  # an XFRM interface's
    gre: tuple[str, str, int | None] | None = None  # a plain GRE tunnel's (local, remote, key or None)


GRE_KINDS = ("gre", "gretap", "ip6gre", "ip6gretap")
PLAIN_GRE_KINDS = ("gre", "ip6gre")


def parse_link(msg: bytes) -> LinkFields:
    """A link message parsed by hand: the same answers as `LinkMessage` (tested against it), without
    pyroute2 decoding every statistics block of every link: a host has a link per VM port."""
    _family, _pad, _type, index, _flags, _change = _IFINFO.unpack_from(msg, 16)
    a = _attrs(msg, 16 + _IFINFO.size, len(msg))
    kind = table = if_id = gre = None
    md = False
    if IFLA_LINKINFO in a:
        info = _attrs(a[IFLA_LINKINFO], 0, len(a[IFLA_LINKINFO]))
        if IFLA_INFO_KIND in info:
            kind = info[IFLA_INFO_KIND].rstrip(b"\0").decode()
        if IFLA_INFO_DATA in info:
            data = _attrs(info[IFLA_INFO_DATA], 0, len(info[IFLA_INFO_DATA]))
            if kind == "vrf" and IFLA_VRF_TABLE in data:
                table = struct.unpack("=I", data[IFLA_VRF_TABLE])[0]
            md = kind in GRE_KINDS and IFLA_GRE_COLLECT_METADATA in data
            if kind == "xfrm" and IFLA_XFRM_IF_ID in data:
                if_id = struct.unpack("=I", data[IFLA_XFRM_IF_ID])[0]
            if kind in PLAIN_GRE_KINDS and not md:
                gre = _gre_ends(data)
    address = a.get(IFLA_ADDRESS)
    return LinkFields(
        index, a[IFLA_IFNAME].rstrip(b"\0").decode() if IFLA_IFNAME in a else "", kind,
        struct.unpack("=I", a[IFLA_MASTER])[0] if IFLA_MASTER in a else 0,
        struct.unpack("=I", a[IFLA_MTU])[0] if IFLA_MTU in a else None,
        address.hex(":") if address else None, table, md, if_id, gre)


def _gre_ends(data: dict[int, bytes]) -> tuple[str, str, int | None] | None:
    local, remote = data.get(IFLA_GRE_LOCAL), data.get(IFLA_GRE_REMOTE)
    if local is None or remote is None or len(local) != len(remote) or len(local) not in (4, 16):
        return None
    af = socket.AF_INET if len(local) == 4 else socket.AF_INET6
    keyed = struct.unpack("!H", data.get(IFLA_GRE_IFLAGS, b"\0\0"))[0] & GRE_KEY
    key = struct.unpack("!I", data[IFLA_GRE_IKEY])[0] if keyed and IFLA_GRE_IKEY in data else None
    return socket.inet_ntop(af, local), socket.inet_ntop(af, remote), key


@dataclass(frozen=True)
class NeighbourFields:
    """What `observe` needs of one RTM_NEWNEIGH message."""

    ifindex: int
    state: int
    flags: int
    dst: str | None
    lladdr: str | None  # lower-case, colon-separated (pyroute2's text)
    protocol: int | None  # NDA_PROTOCOL: absent on kernels that do not keep it


def parse_neighbour(msg: bytes) -> NeighbourFields:
    """A neighbour message parsed by hand: the same answers as pyroute2's `ndmsg` (tested against it), at a
    fraction of the cost: a host's neighbour dump holds the kernel's own entries for every VM too."""
    _family, _pad1, _pad2, ifindex, state, flags, _type = _NDMSG.unpack_from(msg, 16)
    a = _attrs(msg, 16 + _NDMSG.size, len(msg))
    dst = a.get(NDA_DST)
    lladdr = a.get(NDA_LLADDR)
    proto = a.get(NDA_PROTOCOL)
    return NeighbourFields(ifindex, state, flags, _ntop(dst) if dst and len(dst) in (4, 16) else None,
                           lladdr.hex(":") if lladdr else None, proto[0] if proto else None)


_HH = struct.Struct("=HH")
_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")
_BE16 = struct.Struct(">H")
_BE64 = struct.Struct(">Q")


def parse_route(msg: bytes) -> RouteFields:
    """A route message parsed by hand: the same answers as `RouteMessage` (tested on iproute2's bytes),
    but pyroute2's generic decoder costs ~5 ms per route in the emulated VM, i.e. minutes for the
    100k routes an agent must read back on restart. A dump's routes come in a few shapes (the same attributes
    in the same order: every remote CA's encap route is one), so the first message of a shape is walked
    attribute by attribute and its layout kept (`RouteLayout`); the next ones of that shape are read with one
    struct call, checked by their attribute headers, which decide the walk (at a third of the walk's cost)."""
    for layout in _ROUTE_LAYOUTS.get(len(msg), ()):
        fields = layout.read(msg)
        if fields is not None:
            return fields
    fields, layout = _walk_route(msg)
    if layout is not None and (len(msg) in _ROUTE_LAYOUTS or len(_ROUTE_LAYOUTS) < _LAYOUT_LENGTHS):
        known = _ROUTE_LAYOUTS.setdefault(len(msg), [])
        if len(known) < _LAYOUTS_PER_LENGTH:
            known.append(layout)
    return fields


def _address_field(raw: bytes) -> str:
    return _ntop(raw)


def _be_field(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def _family_field(family: int) -> int:
    return 4 if family == socket.AF_INET else 6


_F = {name: i for i, name in enumerate(RouteFields._fields)}


class RouteLayout:
    """Where one shape of route message keeps its fields: a struct over the whole message, which
    attribute headers (length, type) it must carry at which offsets, and which unpacked value becomes which
    field. Two messages with the same length and the same headers at the same offsets are walked alike."""

    __slots__ = ("_struct", "_headers", "_expected", "_plain", "_converted", "_defaults")

    def __init__(self, length: int, headers: list[tuple[int, int, int]],
                 values: dict[str, tuple[int, str, object]], encap_type: int | None) -> None:
        """`headers`: (offset, length, type) of every attribute, nested ones too; `values`: field -> (offset,
        struct code, converter or None)."""
        items: list[tuple[int, str, str | None]] = [(o, "HH", None) for o, _, _ in headers]
        items += [(o, code, name) for name, (o, code, _) in values.items()]
        items.sort()
        fmt, at, index = ["="], 16, 0
        header_index: list[int] = []
        where: dict[str, int] = {}
        for offset, code, name in items:
            if offset < at:
                raise ValueError("overlapping attributes")
            if offset > at:
                fmt.append(f"{offset - at}x")
            fmt.append(code)
            at = offset + struct.calcsize("=" + code)
            if name is None:
                header_index += [index, index + 1]
                index += 2
            else:
                where[name] = index
                index += 1
        if at > length:
            raise ValueError("an attribute beyond the message")
        self._struct = struct.Struct("".join(fmt))
        # the encapsulation's type decides whether its nested attributes are read: it is checked as a header is
        expected = [x for _, hlen, kind in sorted(headers) for x in (hlen, kind)]
        if "encap_type" in where:
            header_index.append(where["encap_type"])
            expected.append(encap_type)
        self._headers = header_index
        self._expected = tuple(expected)
        self._plain = [(_F[name], where[name]) for name, (_, _, conv) in values.items() if conv is None]
        self._converted = [(_F[name], where[name], conv) for name, (_, _, conv) in values.items()
                           if conv is not None]
        self._defaults = [None] * len(RouteFields._fields)
        self._defaults[_F["metric"]] = 0

    def read(self, msg: bytes) -> RouteFields | None:
        """The fields of a message of this shape; None when its attribute headers say it is another one."""
        values = self._struct.unpack_from(msg, 16)
        if tuple([values[i] for i in self._headers]) != self._expected:
            return None
        out = self._defaults.copy()
        for field, i in self._plain:
            out[field] = values[i]
        for field, i, conv in self._converted:
            out[field] = conv(values[i])  # type: ignore[operator]
        return RouteFields._make(out)


# (message length -> the layouts seen at that length; bounded: a dump holds a few shapes, a hostile or odd one
# must not grow it)
_ROUTE_LAYOUTS: dict[int, list[RouteLayout]] = {}
_LAYOUTS_PER_LENGTH = 4
_LAYOUT_LENGTHS = 64

_ADDRESS_ATTRS = {RTA_DST: "dst", RTA_GATEWAY: "gateway", RTA_PREFSRC: "prefsrc"}
_U32_ATTRS = {RTA_TABLE: "table", RTA_PRIORITY: "metric", RTA_OIF: "oif"}


def _walk_route(msg: bytes) -> tuple[RouteFields, RouteLayout | None]:
    """One pass over the attributes, each read in place, noting where each was (the message's layout)."""
    family, dst_len, _src, _tos, table, proto, _scope, rtype, _flags = _RTMSG.unpack_from(msg, 16)
    encap_type = tun_id = tun_dst = tun_ttl = tun_flags = None
    found: dict[str, object] = {"table": table, "metric": 0}  # (RTA_TABLE, when there, over the header's table)
    headers: list[tuple[int, int, int]] = []
    values: dict[str, tuple[int, str, object]] = {
        "family": (16, "B", _family_field), "dst_len": (17, "B", None), "table": (20, "B", None),
        "proto": (21, "B", None), "rtype": (23, "B", None)}
    encap = (0, 0)
    offset, end = 16 + _RTMSG.size, len(msg)
    while offset + 4 <= end:
        length, raw_kind = _HH.unpack_from(msg, offset)
        if length < 4:
            break
        headers.append((offset, length, raw_kind))
        kind = raw_kind & 0x3FFF  # without NLA_F_NESTED / NET_BYTEORDER
        at, stop = offset + 4, offset + length
        if kind in _U32_ATTRS and length >= 8:
            found[_U32_ATTRS[kind]] = _U32.unpack_from(msg, at)[0]
            values[_U32_ATTRS[kind]] = (at, "I", None)
        elif kind in _ADDRESS_ATTRS:
            found[_ADDRESS_ATTRS[kind]] = _ntop(msg[at:stop])
            values[_ADDRESS_ATTRS[kind]] = (at, f"{stop - at}s", _address_field)
        elif kind == RTA_ENCAP_TYPE and length >= 6:
            encap_type = _U16.unpack_from(msg, at)[0]
            values["encap_type"] = (at, "H", None)
        elif kind == RTA_ENCAP:
            encap = (at, min(stop, end))
        offset += (length + 3) & ~3
    if encap_type in (LWTUNNEL_ENCAP_IP, LWTUNNEL_ENCAP_IP6) and encap[1]:
        offset, end = encap
        while offset + 4 <= end:
            length, raw_kind = _HH.unpack_from(msg, offset)
            if length < 4:
                break
            headers.append((offset, length, raw_kind))
            kind = raw_kind & 0x3FFF
            at = offset + 4
            if kind == LWTUNNEL_IP_ID and length >= 12:
                tun_id = _BE64.unpack_from(msg, at)[0]
                values["tun_id"] = (at, "8s", _be_field)
            elif kind == LWTUNNEL_IP_DST:
                tun_dst = _ntop(msg[at : offset + length])
                values["tun_dst"] = (at, f"{length - 4}s", _address_field)
            elif kind == LWTUNNEL_IP_TTL and length >= 5:
                tun_ttl = msg[at]
                values["tun_ttl"] = (at, "B", None)
            elif kind == LWTUNNEL_IP_FLAGS and length >= 6:
                tun_flags = _BE16.unpack_from(msg, at)[0]
                values["tun_flags"] = (at, "2s", _be_field)
            offset += (length + 3) & ~3
    fields = RouteFields(4 if family == socket.AF_INET else 6, found["table"], found.get("dst"), dst_len, proto,
                         rtype, found["metric"], found.get("oif"), encap_type, tun_id, tun_dst, tun_ttl, tun_flags,
                         found.get("gateway"), found.get("prefsrc"))  # type: ignore[arg-type]
    try:
        layout: RouteLayout | None = RouteLayout(len(msg), headers, values, encap_type)
    except (ValueError, struct.error):
        layout = None  # (a shape it cannot describe is walked every time)
    return fields, layout
