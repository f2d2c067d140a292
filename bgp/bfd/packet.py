"""The BFD Control packet (RFC 5880 section 4.1) and its authentication sections (4.2-4.4): pure codec.

`decode` refuses what section 6.8.6 says to discard on the packet alone (version, lengths, Detect Mult,
Multipoint, discriminators) with a `PacketError` naming the field; whether the packet belongs to a session
and whether its authentication verifies (`verify`) is the session's business, since it needs the session's
key and sequence state.

Authentication: simple password (4.2) and keyed / meticulous keyed SHA1 (4.4). The MD5 variants (4.3) are
decoded (so a peer using them is refused as a type mismatch, not as a malformed packet) but neither signed
nor verified: RFC 5880 calls MD5 out as the weaker of the two and no configuration here can ask for it.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from dataclasses import dataclass, field, replace

from nvfabric.bgp.bfd import BfdAuth, BfdState, Diagnostic

VERSION = 1
HEADER_LENGTH = 24  # the mandatory section
_HEADER = struct.Struct("!BBBBIIIII")
_SEQUENCED = struct.Struct("!BBBxI")  # type, length, key id, reserved, sequence number
SHA1_LENGTH = 20
MD5_LENGTH = 16
PASSWORD_MAX = 16  # 4.2: 1 to 16 bytes
SHA1_KEY_MAX = 20  # 4.4: the key is padded with zeros to 20 bytes

# Flag bits of the second byte (after the two State bits).
POLL = 0x20
FINAL = 0x10
CONTROL_PLANE_INDEPENDENT = 0x08
AUTH_PRESENT = 0x04
DEMAND = 0x02
MULTIPOINT = 0x01


class AuthType(enum.IntEnum):
    """RFC 5880 section 4.1 Auth Type."""

    SIMPLE_PASSWORD = 1
    KEYED_MD5 = 2
    METICULOUS_KEYED_MD5 = 3
    KEYED_SHA1 = 4
    METICULOUS_KEYED_SHA1 = 5

    @property
    def meticulous(self) -> bool:
        return self in (AuthType.METICULOUS_KEYED_MD5, AuthType.METICULOUS_KEYED_SHA1)


# The configuration's names (BfdAuth.type) for the types we can sign with.
AUTH_TYPES = {"simple": AuthType.SIMPLE_PASSWORD, "keyed-sha1": AuthType.KEYED_SHA1,
              "meticulous-keyed-sha1": AuthType.METICULOUS_KEYED_SHA1}


class PacketError(ValueError):
    """A received packet 6.8.6 says to discard; `field` is the RFC's name of the offending field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class AuthSection:
    """The Authentication Section as on the wire: `password` for type 1, `sequence` and `digest` otherwise."""

    type: AuthType
    key_id: int
    password: bytes = b""
    sequence: int = 0
    digest: bytes = b""


@dataclass(frozen=True)
class ControlPacket:
    """One BFD Control packet; intervals in microseconds, as on the wire."""

    state: BfdState
    my_discriminator: int
    your_discriminator: int
    desired_min_tx: int
    required_min_rx: int
    detect_mult: int
    diag: Diagnostic = Diagnostic.NONE
    poll: bool = False
    final: bool = False
    control_plane_independent: bool = False
    demand: bool = False
    multipoint: bool = False
    required_min_echo_rx: int = 0
    auth: AuthSection | None = None
    # The datagram this was decoded from: SHA1 verification hashes the packet as received.
    raw: bytes = field(default=b"", compare=False, repr=False)


def _flags(p: ControlPacket) -> int:
    return ((p.state.value << 6) | (POLL if p.poll else 0) | (FINAL if p.final else 0)
            | (CONTROL_PLANE_INDEPENDENT if p.control_plane_independent else 0)
            | (AUTH_PRESENT if p.auth is not None else 0) | (DEMAND if p.demand else 0)
            | (MULTIPOINT if p.multipoint else 0))


def _auth_bytes(auth: AuthSection) -> bytes:
    if auth.type is AuthType.SIMPLE_PASSWORD:
        return bytes((auth.type, 3 + len(auth.password), auth.key_id)) + auth.password
    size = SHA1_LENGTH if auth.type in (AuthType.KEYED_SHA1, AuthType.METICULOUS_KEYED_SHA1) else MD5_LENGTH
    digest = auth.digest.ljust(size, b"\0")[:size]
    return _SEQUENCED.pack(auth.type, 8 + size, auth.key_id, auth.sequence) + digest


def encode(p: ControlPacket) -> bytes:
    """The packet's bytes, with the authentication section as given (see `sign` to compute a digest)."""
    tail = _auth_bytes(p.auth) if p.auth is not None else b""
    head = _HEADER.pack((VERSION << 5) | p.diag, _flags(p), p.detect_mult, HEADER_LENGTH + len(tail),
                        p.my_discriminator, p.your_discriminator, p.desired_min_tx, p.required_min_rx,
                        p.required_min_echo_rx)
    return head + tail


def decode(data: bytes) -> ControlPacket:
    """Parse one datagram, refusing what RFC 5880 6.8.6 discards before looking at any session."""
    if len(data) < HEADER_LENGTH:
        raise PacketError("Length", f"{len(data)} bytes received, the mandatory section is {HEADER_LENGTH}")
    vers_diag, flags, mult, length, mine, yours, tx, rx, echo = _HEADER.unpack_from(data)
    if vers_diag >> 5 != VERSION:
        raise PacketError("Version", f"{vers_diag >> 5}, not {VERSION}")
    minimum = HEADER_LENGTH + 2 if flags & AUTH_PRESENT else HEADER_LENGTH
    if length < minimum:
        raise PacketError("Length", f"{length} is less than {minimum}")
    if length > len(data):
        raise PacketError("Length", f"{length} is more than the {len(data)} bytes received")
    if mult == 0:
        raise PacketError("Detect Mult", "zero")
    if flags & MULTIPOINT:
        raise PacketError("Multipoint", "set")
    if mine == 0:
        raise PacketError("My Discriminator", "zero")
    state = BfdState(flags >> 6)
    if yours == 0 and state not in (BfdState.DOWN, BfdState.ADMIN_DOWN):
        raise PacketError("Your Discriminator", f"zero in state {state.label}")
    try:
        diag = Diagnostic(vers_diag & 0x1F)
    except ValueError:
        raise PacketError("Diagnostic", f"unknown value {vers_diag & 0x1F}") from None
    auth = _decode_auth(data[HEADER_LENGTH:length]) if flags & AUTH_PRESENT else None
    return ControlPacket(state=state, my_discriminator=mine, your_discriminator=yours, desired_min_tx=tx,
                         required_min_rx=rx, detect_mult=mult, diag=diag, poll=bool(flags & POLL),
                         final=bool(flags & FINAL), control_plane_independent=bool(flags & CONTROL_PLANE_INDEPENDENT),
                         demand=bool(flags & DEMAND), multipoint=False, required_min_echo_rx=echo, auth=auth,
                         raw=bytes(data[:length]))


def _decode_auth(section: bytes) -> AuthSection:
    kind, size = section[0], section[1]
    try:
        auth_type = AuthType(kind)
    except ValueError:
        raise PacketError("Auth Type", f"unknown value {kind}") from None
    if size != len(section):
        raise PacketError("Auth Len", f"{size}, but the packet leaves {len(section)} bytes for it")
    if auth_type is AuthType.SIMPLE_PASSWORD:
        if not 4 <= size <= 3 + PASSWORD_MAX:
            raise PacketError("Auth Len", f"{size}: a password is 1 to {PASSWORD_MAX} bytes")
        return AuthSection(auth_type, section[2], password=bytes(section[3:]))
    digest_size = MD5_LENGTH if auth_type in (AuthType.KEYED_MD5, AuthType.METICULOUS_KEYED_MD5) else SHA1_LENGTH
    if size != 8 + digest_size:
        raise PacketError("Auth Len", f"{size}, not {8 + digest_size} for {auth_type.name}")
    _, _, key_id, sequence = _SEQUENCED.unpack_from(section)
    return AuthSection(auth_type, key_id, sequence=sequence, digest=bytes(section[8:]))


def check_auth_config(auth: BfdAuth) -> AuthType:
    """The wire type of a configured authentication; ValueError naming the field when it cannot be used."""
    auth_type = AUTH_TYPES.get(auth.type)
    if auth_type is None:
        raise ValueError(f"bfd.auth.type: {auth.type!r} is not one of {', '.join(AUTH_TYPES)}")
    if not 0 <= auth.key_id <= 255:
        raise ValueError(f"bfd.auth.key_id: {auth.key_id} is not in 0..255")
    limit = PASSWORD_MAX if auth_type is AuthType.SIMPLE_PASSWORD else SHA1_KEY_MAX
    if not 1 <= len(auth.password.encode()) <= limit:
        raise ValueError(f"bfd.auth.password: must be 1 to {limit} bytes for {auth.type}")
    return auth_type


def sign(p: ControlPacket, auth: BfdAuth, sequence: int) -> bytes:
    """Encode `p` with the authentication section of `auth` (4.2, 4.4: the SHA1 is computed over the whole
    packet with the key, zero-padded to 20 bytes, in the place of the digest)."""
    auth_type = check_auth_config(auth)
    key = auth.password.encode()
    if auth_type is AuthType.SIMPLE_PASSWORD:
        return encode(replace(p, auth=AuthSection(auth_type, auth.key_id, password=key)))
    data = encode(replace(p, auth=AuthSection(auth_type, auth.key_id, sequence=sequence & 0xFFFFFFFF,
                                              digest=key.ljust(SHA1_KEY_MAX, b"\0"))))
    return data[:-SHA1_LENGTH] + hashlib.sha1(data).digest()


def verify(p: ControlPacket, auth: BfdAuth) -> bool:
    """Whether the packet's authentication section is the one `auth` would produce (type, key id, password
    or digest). The sequence number window is the session's to check (6.7.3, 6.7.4)."""
    section = p.auth
    if section is None or section.type is not AUTH_TYPES.get(auth.type) or section.key_id != auth.key_id:
        return False
    key = auth.password.encode()
    if section.type is AuthType.SIMPLE_PASSWORD:
        return hmac.compare_digest(section.password, key)
    if not p.raw:
        return False
    keyed = p.raw[:-SHA1_LENGTH] + key.ljust(SHA1_KEY_MAX, b"\0")
    return hmac.compare_digest(hashlib.sha1(keyed).digest(), section.digest)


def sequence_acceptable(received: int, last: int, detect_mult: int, meticulous: bool) -> bool:
    """6.7.3/6.7.4: a known sequence must be within 3 x Detect Mult after the last one (modulo 2^32); keyed
    accepts the same number again, meticulous requires it to grow."""
    distance = (received - last) & 0xFFFFFFFF
    return (1 if meticulous else 0) <= distance <= 3 * detect_mult
