"""Fuzzed BGP messages, structure-aware first: well-formed messages (our own encoders, plus EVPN route
types 1 to 5 and every path attribute type built here field by field), cut into their parts, mutated
part by part (flags, type codes, lengths, values, NLRI fields), packed again (with honest or lying
lengths); then, some of the time, raw bit flips over the result. Everything is drawn from one
random.Random, so a seed reproduces a run message for message.

Each generator returns a `Fuzzed`: the bytes and the NOTIFICATION codes RFC 4271 allows the target to
answer with (an empty set: the target must not close the session).
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

from nvfabric.bgp import wire
from nvfabric.bgp.routes import Family, MacIpRoute, PrefixRoute, UnicastRoute
from nvfabric.bgp.wire import MessageType

# RFC 4271 section 4.5 error codes.
HEADER, OPEN, UPDATE, FSM, CEASE = 1, 2, 3, 5, 6
INTERESTING = (0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 24, 25, 31, 32, 33, 34, 48, 58, 64, 127, 128, 129, 254, 255)
KINDS = ("open", "update", "notification", "route-refresh", "keepalive", "header", "open-in-established")


@dataclass(frozen=True)
class Fuzzed:
    kind: str  # one of KINDS
    data: bytes
    # NOTIFICATION codes the target may answer with; frozenset() = the session must stay up. Cease (6)
    # is always allowed (max-prefix, connection limits).
    allowed: frozenset[int]
    closes: bool = False  # we sent a NOTIFICATION: the target closes without answering


def frame(kind: int, body: bytes) -> bytes:
    return wire.MARKER + struct.pack("!HB", wire.HEADER_LENGTH + len(body), kind) + body


# -- well-formed parts ------------------------------------------------------------------------------------


def _rd(rng: random.Random) -> bytes:
    return struct.pack("!HHI", 0, rng.randrange(1, 65536), rng.randrange(1, 10000))


def _ip(rng: random.Random, width: int) -> bytes:
    return bytes([10]) + rng.randbytes(width - 1)


def evpn_nlri(rng: random.Random, route_type: int) -> bytes:
    """One EVPN NLRI (RFC 7432 section 7, RFC 9136 section 3) of `route_type`, fields well-formed."""
    esi, etag = b"\x00" * 10, struct.pack("!I", rng.choice((0, 0, rng.randrange(1 << 24))))
    label = (rng.randrange(1, 1 << 24)).to_bytes(3, "big")
    width = rng.choice((4, 16))
    if route_type == 1:  # Ethernet Auto-Discovery
        value = _rd(rng) + rng.randbytes(10) + etag + label
    elif route_type == 2:  # MAC/IP Advertisement
        ip = rng.choice((b"", _ip(rng, 4), _ip(rng, 16)))
        value = _rd(rng) + esi + etag + b"\x30" + b"\x02" + rng.randbytes(5) + bytes([len(ip) * 8]) + ip + label
        if rng.random() < 0.2:
            value += label  # Label2
    elif route_type == 3:  # Inclusive Multicast Ethernet Tag
        value = _rd(rng) + etag + bytes([width * 8]) + _ip(rng, width)
    elif route_type == 4:  # Ethernet Segment
        value = _rd(rng) + rng.randbytes(10) + bytes([width * 8]) + _ip(rng, width)
    else:  # IP Prefix
        value = _rd(rng) + esi + etag + bytes([rng.randrange(width * 8 + 1)]) + _ip(rng, width) + \
            b"\x00" * width + label
    return bytes([route_type, len(value)]) + value


def _ext_communities(rng: random.Random) -> bytes:
    items = [
        struct.pack("!BBHI", 0x00, 0x02, 65000, rng.randrange(1, 10000)),  # route target
        struct.pack("!BBIH", 0x03, 0x0C, 0, 9),  # encapsulation NVGRE
        struct.pack("!BBBBI", 0x06, 0x00, rng.choice((0, 1)), 0, rng.choice((1, 0xFFFFFFFF, rng.randrange(1 << 32)))),
        b"\x06\x03" + b"\x02" + rng.randbytes(5),  # router's MAC
        struct.pack("!BBIH", 0x01, 0x02, rng.randrange(1 << 32), rng.randrange(1 << 16)),  # IPv4 RT
        struct.pack("!BBIH", 0x02, 0x02, rng.randrange(1 << 32), rng.randrange(1 << 16)),  # AS4 RT
        rng.randbytes(8),
    ]
    return b"".join(rng.sample(items, rng.randint(1, len(items))))


def _as_path(rng: random.Random, width: int) -> bytes:
    out = b""
    for _ in range(rng.randint(0, 3)):
        asns = [rng.choice((65000, 65001, 23456, rng.randrange(1, 1 << (8 * width)))) for _ in range(rng.randint(1, 4))]
        out += bytes([rng.choice((1, 2, 2, 3, 4)), len(asns)]) + b"".join(a.to_bytes(width, "big") for a in asns)
    return out


def attribute_catalogue(rng: random.Random) -> list[tuple[int, int, bytes]]:
    """One well-formed value of every path attribute type we know of, and some we do not."""
    ids = lambda n: b"".join(_ip(rng, 4) for _ in range(n))  # noqa: E731
    return [
        (0x40, 1, bytes([rng.randrange(3)])),
        (0x40, 2, _as_path(rng, 4)),
        (0x40, 3, _ip(rng, 4)),
        (0x80, 4, rng.randbytes(4)),
        (0x40, 5, struct.pack("!I", 100)),
        (0x40, 6, b""),
        (0xC0, 7, struct.pack("!I", 65000) + _ip(rng, 4)),
        (0xC0, 8, rng.randbytes(4 * rng.randint(1, 4))),
        (0x80, 9, _ip(rng, 4)),
        (0x80, 10, ids(rng.randint(1, 3))),
        (0xC0, 16, _ext_communities(rng)),
        (0xC0, 17, _as_path(rng, 4)),
        (0xC0, 18, struct.pack("!I", 65000) + _ip(rng, 4)),
        (0xC0, 22, b"\x00\x06" + rng.randbytes(3) + _ip(rng, 4)),  # PMSI tunnel
        (0xC0, 23, rng.randbytes(rng.randint(0, 20))),  # tunnel encapsulation
        (0x80, 26, b"\x01\x00\x0b" + rng.randbytes(8)),  # AIGP
        (0xC0, 32, rng.randbytes(12 * rng.randint(1, 3))),  # large communities
        (0xC0, 128, rng.randbytes(rng.randint(4, 30))),  # ATTR_SET
        (rng.choice((0x80, 0xC0, 0xE0, 0x40)), rng.randrange(19, 256), rng.randbytes(rng.randint(0, 40))),
    ]


@dataclass
class UpdateParts:
    """An UPDATE cut into the parts a mutation works on. attributes: [flags, code, value] lists."""

    withdrawn: bytes = b""
    attributes: list[list] = field(default_factory=list)
    nlri: bytes = b""

    @classmethod
    def parse(cls, message: bytes) -> UpdateParts:
        body = message[wire.HEADER_LENGTH:]
        withdrawn_end = 2 + int.from_bytes(body[:2], "big")
        end = withdrawn_end + 2 + int.from_bytes(body[withdrawn_end : withdrawn_end + 2], "big")
        parts = cls(withdrawn=body[2:withdrawn_end], nlri=body[end:])
        pos = withdrawn_end + 2
        while pos < end:
            flags, code = body[pos], body[pos + 1]
            head = 4 if flags & 0x10 else 3
            length = int.from_bytes(body[pos + 2 : pos + head], "big")
            parts.attributes.append([flags, code, body[pos + head : pos + head + length]])
            pos += head + length
        return parts

    def pack(self, rng: random.Random | None = None) -> bytes:
        """The UPDATE body; with `rng`, now and then one length field lies."""
        lie = rng.randrange(len(self.attributes) + 2) if rng is not None and rng.random() < 0.1 else None
        attributes = b""
        for i, (flags, code, value) in enumerate(self.attributes):
            length = len(value)
            if lie == i:
                length = max(0, length + rng.choice((-3, -1, 1, 2, 200)))  # type: ignore[union-attr]
            if flags & 0x10:
                attributes += struct.pack("!BBH", flags, code, min(length, 0xFFFF)) + value
            else:
                attributes += struct.pack("!BBB", flags, code, min(length, 255)) + value
        withdrawn_len, attributes_len = len(self.withdrawn), len(attributes)
        if lie == len(self.attributes):
            withdrawn_len = max(0, withdrawn_len + rng.choice((-1, 1, 5, 4000)))  # type: ignore[union-attr]
        elif lie == len(self.attributes) + 1:
            attributes_len = max(0, attributes_len + rng.choice((-2, -1, 1, 3, 4000)))  # type: ignore[union-attr]
        return struct.pack("!H", withdrawn_len) + self.withdrawn + struct.pack("!H", attributes_len) + \
            attributes + self.nlri


def _reach(family: Family, next_hop: bytes, nlri: bytes) -> list:
    return [0x80 | (0x10 if len(nlri) > 240 else 0), 14,
            struct.pack("!HBB", family.afi, family.safi, len(next_hop)) + next_hop + b"\x00" + nlri]


def _unreach(family: Family, nlri: bytes) -> list:
    return [0x80, 15, struct.pack("!HB", family.afi, family.safi) + nlri]


def _prefixes(rng: random.Random, width: int, count: int) -> bytes:
    out = b""
    for _ in range(count):
        length = rng.randrange(8, width * 8 + 1)
        out += bytes([length]) + _ip(rng, width)[: (length + 7) // 8]
    return out


class Generator:
    """Fuzzed messages for one session; `negotiated` from its handshake (None before it)."""

    def __init__(self, rng: random.Random, caps: wire.Capabilities, mutation_rate: float = 0.75) -> None:
        self.rng = rng
        self.caps = caps
        # The share of UPDATEs mutated; the others stay well-formed, so routes with odd but valid values
        # reach the RIB and what is downstream of it (an agent's kernel).
        self.mutation_rate = mutation_rate

    # -- UPDATE ----------------------------------------------------------------------------------------

    def base_update(self, negotiated: wire.Negotiated) -> UpdateParts:
        """A well-formed UPDATE: from our encoder, or built here with every EVPN route type and extra
        attributes."""
        rng = self.rng
        choice = rng.randrange(6)
        if choice == 0:
            mac = f"02:00:00:00:{rng.randrange(256):02x}:{rng.randrange(256):02x}"
            ip = rng.choice((None, f"10.1.0.{rng.randrange(1, 255)}", f"2001:db8::{rng.randrange(1, 9999):x}"))
            routes = [
                MacIpRoute(rd="198.51.100.9:1", mac=mac, ip=ip, vsid=rng.randrange(1, 1 << 24), next_hop="198.51.100.9",
                           route_targets=(f"65000:{rng.randrange(1, 9999)}",),
                           router_mac=rng.choice((None, "02:00:5e:10:00:01")), mobility_seq=rng.choice((0, 1, 7))),
                PrefixRoute(rd="198.51.100.9:2",
                            prefix=rng.choice((f"10.2.{rng.randrange(256)}.0/24", "0.0.0.0/0",
                                               f"2001:db8:{rng.randrange(9999):x}::/48")),
                            vsid=rng.randrange(1, 1 << 24), next_hop="198.51.100.9", route_targets=("65000:1",)),
            ]
            route = rng.choice(routes)
            message = rng.choice(wire.encode_update(negotiated, [route], [route] if rng.random() < 0.3 else []))
            return UpdateParts.parse(message)
        if choice == 1 and Family.IPV4_UNICAST in negotiated.families:
            route = UnicastRoute(prefix=f"203.0.113.{rng.randrange(256)}/32", next_hop="198.51.100.9")
            return UpdateParts.parse(rng.choice(wire.encode_update(negotiated, [route], [route])))
        catalogue = attribute_catalogue(rng)
        mandatory = [list(a) for a in catalogue[:3]]
        extra = [list(a) for a in rng.sample(catalogue[3:], rng.randint(0, 6))]
        parts = UpdateParts(attributes=mandatory + extra)
        families = [f for f in (Family.L2VPN_EVPN, Family.IPV6_UNICAST) if f in negotiated.families]
        family = rng.choice(families) if families else None
        if family is Family.L2VPN_EVPN:
            nlri = b"".join(evpn_nlri(rng, rng.randint(1, 5)) for _ in range(rng.randint(1, 4)))
            next_hop = rng.choice((_ip(rng, 4), _ip(rng, 16), _ip(rng, 32)))
        elif family is Family.IPV6_UNICAST:
            nlri, next_hop = _prefixes(rng, 16, rng.randint(1, 4)), _ip(rng, 16)
        else:
            nlri, next_hop = b"", b""
        if family is not None:
            if rng.random() < 0.3:
                parts.attributes.insert(0, _unreach(family, nlri))
            else:
                parts.attributes.insert(0, _reach(family, next_hop, nlri))
        if Family.IPV4_UNICAST in negotiated.families:
            if rng.random() < 0.3:
                parts.withdrawn = _prefixes(rng, 4, rng.randint(1, 3))
            if rng.random() < 0.3:
                parts.nlri = _prefixes(rng, 4, rng.randint(1, 3))
        if rng.random() < 0.1:
            rng.shuffle(parts.attributes)
        return parts

    def _mutate_value(self, value: bytes) -> bytes:
        rng = self.rng
        if not value:
            return rng.randbytes(rng.randint(1, 8))
        how = rng.randrange(5)
        data = bytearray(value)
        if how == 0:
            return bytes(data[: rng.randrange(len(data))])  # truncated
        if how == 1:
            return bytes(data) + rng.randbytes(rng.randint(1, 16))  # extended
        if how == 2:
            # A length or type field inside (MP_REACH: AFI/SAFI, next-hop length; EVPN: route type,
            # route length, MAC/IP/prefix lengths) is usually in the first bytes or at a known offset.
            spots = [p for p in (0, 1, 2, 3, 4, 5, 6, 7, 24, 26, 29, 31, 34, 37) if p < len(data)]
            data[rng.choice(spots)] = rng.choice(INTERESTING)
            return bytes(data)
        if how == 3:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            return bytes(data)
        return rng.randbytes(rng.randint(0, 64))

    def mutate_update(self, parts: UpdateParts) -> None:
        rng = self.rng
        for _ in range(rng.randint(1, 3)):
            attrs = parts.attributes
            how = rng.randrange(10)
            if attrs and how == 0:
                rng.choice(attrs)[0] ^= rng.choice((0x80, 0x40, 0x20, 0x10, 0x08, 0x01))
            elif attrs and how == 1:
                rng.choice(attrs)[1] = rng.choice((*range(0, 33), 128, 255, rng.randrange(256)))
            elif attrs and how in (2, 3, 4):
                target = rng.choice(attrs)
                target[2] = self._mutate_value(target[2])
            elif attrs and how == 5:
                attrs.append(list(rng.choice(attrs)))  # repeated
            elif attrs and how == 6:
                attrs.pop(rng.randrange(len(attrs)))
            elif how == 7:
                flags, code, value = rng.choice(attribute_catalogue(rng))
                attrs.insert(rng.randrange(len(attrs) + 1), [flags, code, self._mutate_value(value)
                                                            if rng.random() < 0.5 else value])
            elif how == 8:
                parts.withdrawn = self._mutate_value(parts.withdrawn)
            else:
                parts.nlri = self._mutate_value(parts.nlri)

    def update(self, negotiated: wire.Negotiated) -> Fuzzed:
        parts = self.base_update(negotiated)
        if self.rng.random() < self.mutation_rate:
            self.mutate_update(parts)
        body = parts.pack(self.rng)
        if len(body) + wire.HEADER_LENGTH > wire.MAX_MESSAGE_LENGTH:
            body = body[: wire.MAX_MESSAGE_LENGTH - wire.HEADER_LENGTH]
        return self._maybe_flip(Fuzzed("update", frame(MessageType.UPDATE, body), frozenset({UPDATE})))

    # -- the others ------------------------------------------------------------------------------------

    def open(self) -> Fuzzed:
        rng = self.rng
        body = bytearray(wire.encode_open(self.caps)[wire.HEADER_LENGTH:])
        how = rng.randrange(6)
        if how == 0:  # a fixed field: version, AS, hold time, identifier, optional parameters length
            pos = rng.choice((0, 1, 2, 3, 4, 5, 6, 7, 8, 9))
            body[pos] = rng.choice(INTERESTING)
        elif how == 1 and len(body) > 10:  # a parameter or capability type/length byte
            pos = rng.randrange(10, len(body))
            body[pos] = rng.choice(INTERESTING)
        elif how == 2:
            body = body[: rng.randrange(len(body))]
        elif how == 3:
            # Extra capabilities, some unknown, some malformed (RFC 5492), in one optional parameter.
            codes = (1, 2, 64, 65, 69, 70, 71, 73, rng.randrange(256))
            caps = b"".join(bytes([rng.choice(codes), n]) + rng.randbytes(n)
                            for n in (rng.choice((0, 1, 2, 4, 6)) for _ in range(rng.randint(1, 4))))
            param = bytes([2, len(caps)]) + caps
            body = body[:9] + bytes([body[9] + len(param) & 0xFF]) + body[10:] + param
        elif how == 4:
            for _ in range(rng.randint(1, 4)):
                body[rng.randrange(len(body))] = rng.randrange(256)
        else:  # RFC 9072 extended optional parameters
            params = bytes(body[10:])
            body = body[:9] + b"\xff\xff" + struct.pack("!H", len(params) + rng.choice((0, 0, 1, -1))) + params
        # A truncated OPEN may fall under the minimum length: 1/2 then (RFC 4271 section 6.1).
        return Fuzzed("open", frame(MessageType.OPEN, bytes(body)), frozenset({OPEN, HEADER}))

    def notification(self) -> Fuzzed:
        rng = self.rng
        body = bytes([rng.choice((*range(0, 8), rng.randrange(256))), rng.choice((0, 1, 2, 3, 255))])
        body = rng.choice((body, body[:1], body + rng.randbytes(rng.randint(1, 100))))
        data = frame(MessageType.NOTIFICATION, body)
        return Fuzzed("notification", data, frozenset({HEADER}), closes=True)

    def route_refresh(self) -> Fuzzed:
        rng = self.rng
        afi = rng.choice((1, 2, 25, 0, 3, 65535))
        safi = rng.choice((1, 70, 128, 0, 255))
        body = struct.pack("!HBB", afi, rng.choice((0, 0, 1, 2, 255)), safi)
        if rng.random() < 0.3:
            body = self._mutate_value(body)
        allowed = frozenset() if len(body) == 4 else frozenset({HEADER})
        return Fuzzed("route-refresh", frame(MessageType.ROUTE_REFRESH, body), allowed)

    def keepalive(self) -> Fuzzed:
        body = self.rng.randbytes(self.rng.randint(0, 3))
        return Fuzzed("keepalive", frame(MessageType.KEEPALIVE, body), frozenset({HEADER}) if body else frozenset())

    def header(self, negotiated: wire.Negotiated) -> Fuzzed:
        """A well-formed message with a broken header: marker, length (too short, too long, > 4096), type."""
        rng = self.rng
        message = bytearray(rng.choice((wire.encode_keepalive(), wire.encode_route_refresh(Family.L2VPN_EVPN),
                                        self.update(negotiated).data)))
        how = rng.randrange(3)
        if how == 0:
            message[rng.randrange(16)] ^= 1 << rng.randrange(8)
        elif how == 1:
            message[16:18] = struct.pack("!H", rng.choice((0, 1, 18, 4097, 65535)))
        else:
            message[18] = rng.choice((0, 6, 7, 255))
        return Fuzzed("header", bytes(message), frozenset({HEADER}))

    def open_in_established(self) -> Fuzzed:
        # RFC 4271 section 8.2.2 (Established, Event 19): an OPEN is an FSM error (RFC 6608 subcode 3).
        return Fuzzed("open-in-established", wire.encode_open(self.caps), frozenset({FSM}))

    def _maybe_flip(self, fuzzed: Fuzzed) -> Fuzzed:
        """Raw bit flips over the body now and then (the header too, rarely): any error code then."""
        rng = self.rng
        if rng.random() > 0.1:
            return fuzzed
        data = bytearray(fuzzed.data)
        header = rng.random() < 0.1
        # Never the length field: a longer length only makes the target wait for bytes that never come.
        spots = [*range(16), 18] if header else range(wire.HEADER_LENGTH, len(data))
        if not spots:
            return fuzzed
        for _ in range(rng.randint(1, 8)):
            data[rng.choice(spots)] ^= 1 << rng.randrange(8)
        allowed = frozenset({HEADER, OPEN, UPDATE, FSM}) if header else fuzzed.allowed
        return Fuzzed(fuzzed.kind, bytes(data), allowed)

    def established(self, negotiated: wire.Negotiated) -> Fuzzed:
        """One fuzzed message for an Established session, UPDATEs most of the time."""
        rng = self.rng
        pick = rng.random()
        if pick < 0.75:
            return self.update(negotiated)
        if pick < 0.83:
            return self.route_refresh()
        if pick < 0.88:
            return self.keepalive()
        if pick < 0.95:
            return self.header(negotiated)
        if pick < 0.97:
            return self.open_in_established()
        return self.notification()
