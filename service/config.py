"""The API section every daemon's configuration has: `api: {listen: "ADDRESS:PORT", token: ...}`.

Reading the YAML is the daemon's (bgp/config.py `read_api`, so errors name their field the same way);
what a listen address is, is decided here once.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class ApiConfig:
    listen: str  # "127.0.0.1:8500" or "[::1]:8500"
    token: str | None = None  # no token, no API: the daemon runs from its configuration

    @property
    def host_port(self) -> tuple[str, int]:
        return split_listen(self.listen)


def split_listen(listen: str) -> tuple[str, int]:
    """"127.0.0.1:8500" or "[::1]:8500" -> (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def check_listen(value: str, example: str = "127.0.0.1:8500") -> str:
    """`value` when it is an IP address and a port 1..65535; ValueError saying what is expected otherwise."""
    host, sep, port = value.rpartition(":")
    try:
        ipaddress.ip_address(host.strip("[]"))
        ok = bool(sep) and 0 < int(port) < 65536
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{value!r} is not 'address:port' (e.g. {example} or [::1]:{example.rpartition(':')[2]})")
    return value
