"""The one MAC address type of the tree: a port's MAC, the router MAC, an EVPN type-2 MAC.

Parsing is netaddr's (EUI-48): orchestrators and operators write MACs as `00:15:5d:01:02:03`,
`00-15-5D-01-02-03` (Windows, Hyper-V), `0015.5d01.0203` (Cisco) or bare `00155d010203`, in any case.
A `Mac` is held as its canonical text, lower-case and colon-separated, which is how FRR, iproute2 and the
kernel print it: so it goes into JSON, logs and route keys as is, and equals the same MAC read back from
the kernel or decoded from BGP. `packed` is the 6 bytes the kernel and the BGP wire format carry.
"""

from __future__ import annotations

from netaddr import EUI, AddrFormatError, mac_unix_expanded

EXAMPLE = "02:00:5e:00:53:01"  # RFC 7042 section 2.1.2: the documentation range, locally administered


class MacError(ValueError):
    """Not a MAC address (or not one a port may have); `problem` says why. Callers name the field."""

    def __init__(self, value: object, problem: str) -> None:
        super().__init__(f"{value!r}: {problem}")
        self.value = value
        self.problem = problem


class Mac(str):
    """An EUI-48 MAC address in canonical text form; `Mac(text)` accepts the common notations."""

    __slots__ = ()

    def __new__(cls, value: object) -> Mac:
        if isinstance(value, Mac):
            return value
        if not isinstance(value, str):
            raise MacError(value, f"must be a MAC address string like {EXAMPLE}")
        text = value.strip()
        try:
            # netaddr also takes 11 bare hex digits (a leading zero dropped): from a person, a typo
            if len(text) == 11 and text.isalnum():
                raise AddrFormatError(text)
            eui = EUI(text, version=48, dialect=mac_unix_expanded)
        except (AddrFormatError, TypeError, ValueError, IndexError):
            raise MacError(value, f"is not a MAC address (six hex octets, like {EXAMPLE})") from None
        return str.__new__(cls, str(eui))

    @classmethod
    def from_packed(cls, data: bytes) -> Mac:
        """The MAC in 6 bytes as carried by netlink and BGP; no parsing, so cheap enough for a decoder."""
        if len(data) != 6:
            raise MacError(data, "a MAC address is 6 bytes")
        return str.__new__(cls, data.hex(":"))

    @classmethod
    def unicast(cls, value: object) -> Mac:
        """A MAC an interface can have: not multicast/broadcast (I/G bit set), not all zero."""
        mac = cls(value)
        if int(mac[:2], 16) & 1:
            raise MacError(value, "is a multicast/broadcast MAC; a port needs a unicast MAC")
        if mac == "00:00:00:00:00:00":
            raise MacError(value, "the all-zero MAC is not a valid port MAC")
        return mac

    @property
    def packed(self) -> bytes:
        return bytes.fromhex(self.replace(":", ""))


__all__ = ["EXAMPLE", "Mac", "MacError"]
