"""The BFD Control packet codec: FRR's bytes as captured, every 6.8.6 packet check, authentication."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import replace

import pytest

from nvfabric.bgp.bfd import BfdAuth, BfdState, Diagnostic
from nvfabric.bgp.bfd import packet as pkt
from nvfabric.bgp.bfd.packet import AuthSection, AuthType, ControlPacket, PacketError

# UDP payloads sent by FRR 8.4 bfdd (Debian 12) to our session, from `tcpdump -x` on the veth (the IPv4
# and UDP headers left out): Init at the slow rate, then Up with Poll for 300 ms, and its Final to our Poll.
FRR_INIT = bytes.fromhex("20800318 54e37c1c 29dffd74 000f4240 000f4240 0000c350")
FRR_UP_POLL = bytes.fromhex("20e00318 54e37c1c 29dffd74 000493e0 000493e0 0000c350")
FRR_UP_FINAL = bytes.fromhex("20d00318 54e37c1c 29dffd74 000493e0 000493e0 0000c350")


def test_frr_init_packet_decodes_field_by_field() -> None:
    p = pkt.decode(FRR_INIT)
    assert p == ControlPacket(state=BfdState.INIT, my_discriminator=0x54E37C1C, your_discriminator=0x29DFFD74,
                              desired_min_tx=1_000_000, required_min_rx=1_000_000, detect_mult=3,
                              diag=Diagnostic.NONE, required_min_echo_rx=50_000)
    assert pkt.encode(p) == FRR_INIT


def test_frr_poll_and_final_bits() -> None:
    poll, final = pkt.decode(FRR_UP_POLL), pkt.decode(FRR_UP_FINAL)
    assert (poll.state, poll.poll, poll.final, poll.desired_min_tx) == (BfdState.UP, True, False, 300_000)
    assert (final.state, final.poll, final.final) == (BfdState.UP, False, True)
    assert pkt.encode(poll) == FRR_UP_POLL and pkt.encode(final) == FRR_UP_FINAL


def test_encode_every_flag_and_diag() -> None:
    p = ControlPacket(state=BfdState.DOWN, my_discriminator=1, your_discriminator=0, desired_min_tx=2,
                      required_min_rx=3, detect_mult=5, diag=Diagnostic.CONTROL_DETECTION_TIME_EXPIRED,
                      control_plane_independent=True, demand=True)
    assert pkt.encode(p) == bytes.fromhex("21 4a 05 18 00000001 00000000 00000002 00000003 00000000")


def _with(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + bytes([value]) + data[offset + 1:]


@pytest.mark.parametrize("data, field", [
    (FRR_INIT[:23], "Length"),
    (_with(FRR_INIT, 0, 0x40), "Version"),                       # version 2
    (_with(FRR_INIT, 0, 0x00), "Version"),                       # version 0
    (_with(FRR_INIT, 3, 23), "Length"),                          # below the mandatory section
    (_with(FRR_INIT, 3, 25), "Length"),                          # more than received
    (_with(_with(FRR_INIT, 1, 0x84), 3, 25) + b"\x01", "Length"),  # A bit: at least 26
    (_with(FRR_INIT, 2, 0), "Detect Mult"),
    (_with(FRR_INIT, 1, 0x81), "Multipoint"),
    (FRR_INIT[:4] + bytes(4) + FRR_INIT[8:], "My Discriminator"),
    (_with(FRR_INIT[:8] + bytes(4) + FRR_INIT[12:], 1, 0xC0), "Your Discriminator"),  # Up with Your 0
    (FRR_INIT[:8] + bytes(4) + FRR_INIT[12:], "Your Discriminator"),                  # Init with Your 0
    (_with(FRR_INIT, 0, 0x3F), "Diagnostic"),
])
def test_refused_with_the_field_named(data: bytes, field: str) -> None:
    with pytest.raises(PacketError) as err:
        pkt.decode(data)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")


def test_your_discriminator_zero_accepted_in_down_and_admin_down() -> None:
    down = _with(FRR_INIT[:8] + bytes(4) + FRR_INIT[12:], 1, 0x40)
    admin = _with(FRR_INIT[:8] + bytes(4) + FRR_INIT[12:], 1, 0x00)
    assert pkt.decode(down).state is BfdState.DOWN
    assert pkt.decode(admin).state is BfdState.ADMIN_DOWN


def test_trailing_bytes_beyond_length_are_ignored() -> None:
    p = pkt.decode(FRR_INIT + b"\xff\xff")
    assert p.raw == FRR_INIT


BASE = ControlPacket(state=BfdState.DOWN, my_discriminator=0x01020304, your_discriminator=0,
                     desired_min_tx=1_000_000, required_min_rx=300_000, detect_mult=3)


def test_simple_password_exact_bytes_and_verification() -> None:
    auth = BfdAuth(type="simple", key_id=7, password="secret")
    data = pkt.sign(BASE, auth, sequence=0)
    assert data == bytes.fromhex("20440321 01020304 00000000 000f4240 000493e0 00000000") + \
        bytes([1, 9, 7]) + b"secret"
    p = pkt.decode(data)
    assert p.auth == AuthSection(AuthType.SIMPLE_PASSWORD, 7, password=b"secret")
    assert pkt.verify(p, auth)
    assert not pkt.verify(p, replace(auth, password="secreT"))
    assert not pkt.verify(p, replace(auth, key_id=8))
    assert not pkt.verify(p, replace(auth, type="keyed-sha1"))


@pytest.mark.parametrize("kind, wire_type", [("keyed-sha1", 4), ("meticulous-keyed-sha1", 5)])
def test_sha1_exact_bytes_and_verification(kind: str, wire_type: int) -> None:
    auth = BfdAuth(type=kind, key_id=1, password="key")
    data = pkt.sign(BASE, auth, sequence=0x11223344)
    header = bytes.fromhex("20440334 01020304 00000000 000f4240 000493e0 00000000")
    section = struct.pack("!BBBxI", wire_type, 28, 1, 0x11223344)
    # 4.4 / 6.7.4: SHA1 over the packet with the key, zero-padded to 20 bytes, where the hash goes.
    expected_hash = hashlib.sha1(header + section + b"key" + bytes(17)).digest()
    assert data == header + section + expected_hash
    p = pkt.decode(data)
    assert p.auth == AuthSection(AuthType(wire_type), 1, sequence=0x11223344, digest=expected_hash)
    assert pkt.verify(p, auth)
    assert not pkt.verify(p, replace(auth, password="kez"))
    tampered = pkt.decode(_with(data, 2, 4))  # Detect Mult changed in flight
    assert not pkt.verify(tampered, auth)


def test_md5_is_decoded_but_never_verifies() -> None:
    data = bytes.fromhex("20440330 01020304 00000000 000f4240 000493e0 00000000") + \
        struct.pack("!BBBxI", 2, 24, 1, 5) + bytes(16)
    p = pkt.decode(data)
    assert p.auth is not None and p.auth.type is AuthType.KEYED_MD5
    assert not pkt.verify(p, BfdAuth(type="keyed-sha1", key_id=1, password="x"))


@pytest.mark.parametrize("section, field", [
    (bytes([9, 4, 1, 0x41]), "Auth Type"),
    (bytes([1, 5, 1, 0x41]), "Auth Len"),            # says 5, has 4
    (bytes([1, 3, 1]), "Auth Len"),                  # empty password
    (struct.pack("!BBBxI", 4, 24, 1, 0) + bytes(16), "Auth Len"),  # SHA1 with an MD5-sized section
])
def test_bad_auth_sections(section: bytes, field: str) -> None:
    head = bytearray(FRR_INIT)
    head[1] |= pkt.AUTH_PRESENT
    head[3] = 24 + len(section)
    with pytest.raises(PacketError) as err:
        pkt.decode(bytes(head) + section)
    assert err.value.field == field


@pytest.mark.parametrize("auth, field", [
    (BfdAuth(type="keyed-md5", key_id=1, password="x"), "bfd.auth.type"),
    (BfdAuth(type="simple", key_id=256, password="x"), "bfd.auth.key_id"),
    (BfdAuth(type="simple", key_id=1, password="x" * 17), "bfd.auth.password"),
    (BfdAuth(type="keyed-sha1", key_id=1, password=""), "bfd.auth.password"),
    (BfdAuth(type="keyed-sha1", key_id=1, password="x" * 21), "bfd.auth.password"),
])
def test_unusable_auth_config_names_the_field(auth: BfdAuth, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        pkt.check_auth_config(auth)


@pytest.mark.parametrize("received, last, meticulous, ok", [
    (10, 10, False, True), (10, 10, True, False), (11, 10, True, True), (19, 10, False, True),
    (20, 10, False, False), (9, 10, False, False), (2, 0xFFFFFFFE, True, True),  # wraps
])
def test_sequence_window(received: int, last: int, meticulous: bool, ok: bool) -> None:
    assert pkt.sequence_acceptable(received, last, detect_mult=3, meticulous=meticulous) is ok
