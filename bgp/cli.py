"""`nvfabric bgp speak --config FILE`: announce the routes of a YAML file, print what is learned.

Output is JSON lines on stdout, one per change of the client's deduplicated stream:
    {"action": "announce", "key": "...", "route": {...}}
    {"action": "withdraw", "key": "...", "route": {...key fields...}}
    {"event": "established" | "down" | "end-of-rib", "peer": "...", "family": ..., "reason": ...}
Logs go to stderr. SIGHUP re-reads the file's routes and announces/withdraws the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from ipaddress import IPv4Address, IPv6Address, IPv4Network, IPv6Network
from typing import Any

from nvfabric.bgp import config as bgp_config
from nvfabric.bgp.client import Client, RouteUpdate
from nvfabric.bgp.routes import MacIpKey, MacIpRoute, PrefixKey, PrefixRoute, RouteKey, UnicastKey, UnicastRoute
from nvfabric.bgp.speaker import PeerStatus
from nvfabric.service import daemon


def register(subparsers: argparse._SubParsersAction) -> None:
    bgp = subparsers.add_parser("bgp", help="BGP EVPN control plane tools")
    sub = bgp.add_subparsers(dest="bgp_command", required=True, metavar="BGP_COMMAND")
    speak = sub.add_parser("speak", help="announce routes from a YAML file and print learned routes as JSON lines")
    speak.add_argument("--config", required=True, help="speaker configuration (see docs/bgp.md)")
    speak.add_argument("--log-level", default="INFO", help="stderr log level (default INFO)")
    speak.set_defaults(func=_speak)


def _speak(args: argparse.Namespace) -> int:
    return daemon.run("nvfabric bgp speak", args.config, bgp_config.load, bgp_config.ConfigError,
                      lambda cfg: speak(cfg, args.config), log_level=args.log_level)


async def speak(cfg: bgp_config.SpeakerConfig, path: str) -> int:
    client = Client(cfg)
    announced = {route.key: route for route in cfg.routes}
    await client.announce(announced.values())
    await client.start()

    async def reload() -> None:
        # SIGHUP: re-read the routes (only the routes) and announce/withdraw the difference.
        nonlocal announced
        try:
            fresh = {route.key: route for route in bgp_config.load(path).routes}
        except bgp_config.ConfigError as err:
            logging.getLogger(__name__).error("reload of %s failed, keeping the old routes: %s", path, err)
            return
        await client.withdraw([key for key in announced if key not in fresh])
        await client.announce([route for key, route in fresh.items() if announced.get(key) != route])
        announced = fresh

    async def printer() -> None:
        async for event in client.events():
            sys.stdout.write(json.dumps(event_json(event), sort_keys=True) + "\n")
            sys.stdout.flush()

    task = asyncio.get_running_loop().create_task(printer())
    await daemon.until_stopped(reload)
    task.cancel()
    await client.stop()
    return daemon.EXIT_OK


def event_json(event: RouteUpdate | PeerStatus) -> dict[str, Any]:
    if isinstance(event, PeerStatus):
        out: dict[str, Any] = {"event": event.state, "peer": event.peer}
        if event.family is not None:
            out["family"] = event.family.name
        if event.reason:
            out["reason"] = event.reason
        return out
    if event.route is None:
        return {"action": "withdraw", "key": key_text(event.key), "route": _jsonable(event.key._asdict())}
    return {"action": "announce", "key": key_text(event.key), "route": route_json(event.route)}


def key_text(key: RouteKey) -> str:
    if isinstance(key, MacIpKey):
        return f"mac-ip {key.rd} {key.ethernet_tag} {key.mac} {key.ip or '-'}"
    if isinstance(key, PrefixKey):
        return f"prefix {key.rd} {key.ethernet_tag} {key.prefix}"
    assert isinstance(key, UnicastKey)
    return f"unicast {key.prefix}"


def route_json(route: MacIpRoute | PrefixRoute | UnicastRoute) -> dict[str, Any]:
    kind = {MacIpRoute: "mac-ip", PrefixRoute: "prefix", UnicastRoute: "unicast"}[type(route)]
    fields = {name: getattr(route, name) for name in route.__dataclass_fields__}
    return {"type": kind, **_jsonable(fields)}


def _jsonable(fields: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, value in fields.items():
        if isinstance(value, (IPv4Address, IPv6Address, IPv4Network, IPv6Network)):
            value = str(value)
        elif isinstance(value, bytes):
            value = value.hex()
        elif isinstance(value, tuple):
            value = list(value)
        out[name] = value
    return out
