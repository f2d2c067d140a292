"""The MAC type: the notations people and orchestrators write, one canonical text, the bytes on the wire."""

from __future__ import annotations

import json

import pytest

from nvfabric.bgp.mac import Mac, MacError

CANONICAL = "00:15:5d:01:02:03"


@pytest.mark.parametrize("text", [
    "00:15:5d:01:02:03",
    "00:15:5D:01:02:03",  # upper case
    "00-15-5D-01-02-03",  # Windows / Hyper-V
    "0015.5d01.0203",  # Cisco
    "00155D010203",  # bare hex
    " 00:15:5d:01:02:03\n",  # read from a file or a terminal
])
def test_common_notations_give_the_canonical_text(text):
    mac = Mac(text)
    assert mac == CANONICAL and str(mac) == CANONICAL and isinstance(mac, str)
    assert hash(mac) == hash(CANONICAL)  # a key in a dict of plain canonical strings finds it
    assert json.dumps({"mac": mac}) == '{"mac": "00:15:5d:01:02:03"}'


def test_packed_is_the_six_bytes_and_back():
    assert Mac("0015.5d01.0203").packed == bytes.fromhex("00155d010203")
    assert Mac.from_packed(bytes.fromhex("00155d010203")) == CANONICAL
    assert type(Mac.from_packed(bytes(6))) is Mac
    with pytest.raises(MacError):
        Mac.from_packed(bytes(5))


@pytest.mark.parametrize("value, words", [
    ("00:15:5d:01:02", "not a MAC"),
    ("00:15:5d:01:02:03:04:05", "not a MAC"),  # EUI-64
    ("zz:15:5d:01:02:03", "not a MAC"),
    ("00-15-5d:01:02:03", "not a MAC"),  # mixed separators
    ("00155d01020", "not a MAC"),  # 11 digits: netaddr would pad it, a person meant 12
    ("", "not a MAC"),
    (None, "string"),
    (0x00155D010203, "string"),  # an integer is not taken for a MAC
])
def test_what_is_not_a_mac(value, words):
    with pytest.raises(MacError) as info:
        Mac(value)
    assert words in info.value.problem and info.value.value == value


@pytest.mark.parametrize("value, words", [
    ("01:00:5e:00:00:01", "multicast"),
    ("ff:ff:ff:ff:ff:ff", "multicast"),
    ("0000.0000.0000", "all-zero"),
])
def test_unicast_refuses_group_and_zero_macs(value, words):
    assert Mac(value)  # a MAC all the same: a BGP route may carry it
    with pytest.raises(MacError, match=words):
        Mac.unicast(value)
    assert Mac.unicast("02-00-5E-10-00-01") == "02:00:5e:10:00:01"
