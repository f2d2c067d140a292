"""`nvfabric ctl`: the operator's client of the host agent's REST API (docs/agent.md#nvfabric-ctl).

The client, its refusal messages, exit statuses and output are service/ctl.py's, shared with the gateway's
and the reflector's; here are the agent's paths and tables. `nvfabric ctl gateway ...` is added beside
these by the command shell (nvfabric/cli.py), from gateway/ctl.py: the agent knows no gateway.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from nvfabric.hostagent.config import DEFAULT_LISTEN
from nvfabric.service import ctl as service
from nvfabric.service.ctl import (
    EXIT_USAGE,
    Action,
    Client,
    CtlError,
    done,
    file_body,
    segment,
    show,
    table,
)

# NVFABRIC_API and NVFABRIC_TOKEN: the agent's names before each daemon had its own, still read (second)
AGENT = service.Daemon("agent", "nvfabric agent", "nvfabric-agent", ("NVFABRIC_AGENT_API", "NVFABRIC_API"),
                       ("NVFABRIC_AGENT_TOKEN", "NVFABRIC_TOKEN"), f"http://{DEFAULT_LISTEN}")


# ---------------------------------------------------------------------- the command line

def register(subparsers: argparse._SubParsersAction) -> tuple[argparse._SubParsersAction, argparse.ArgumentParser]:
    """Adds `ctl` and its commands; returns its subcommands and their common options, for more daemons'
    clients to be added beside (`ctl gateway`)."""
    # Common options are accepted before and after the subcommand (`ctl -o json ports`, `ctl ports -o json`):
    # the leaves default to SUPPRESS so that a value given before is not overwritten by a default.
    ctl = service.parser(subparsers, AGENT, "ctl", help="talk to the host agent's API: ports, routing domains, "
                         "lookup records, trace", parents=[service.options(AGENT, defaults=True)])
    common = service.options(AGENT, defaults=False)
    sub = ctl.add_subparsers(dest="ctl_command", required=True, metavar="WHAT")

    def leaf(name: str, help: str, action: Action, parent: Any = sub) -> argparse.ArgumentParser:
        return service.command(parent, common, _run, name, help, action, AGENT)

    leaf("routing-domains", "list the routing domains", _list_routing_domains)
    leaf("ports", "list the local ports", _list_ports)
    p = leaf("lookup-records", "every CA this host knows (Get-NetVirtualizationLookupRecord)", _lookup_records)
    p.add_argument("--routing-domain")
    p.add_argument("--vsid")
    p.add_argument("--ca")
    p = leaf("customer-routes", "the routes of each routing domain (Get-NetVirtualizationCustomerRoute)",
             _customer_routes)
    p.add_argument("--routing-domain")
    leaf("provider-addresses", "this host's underlay addresses (Get-NetVirtualizationProviderAddress)",
         _provider_addresses)
    p = leaf("trace", "where a packet from SRC to DST goes (Select-NetVirtualizationNextHop)", _trace)
    p.add_argument("routing_domain")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--port", help="the packet is sent by this local port's VM (port security decides first)")
    p = leaf("trace-arrival", "what this host does with NVGRE from PA with VSID, inner SRC -> DST", _trace_arrival)
    p.add_argument("pa")
    p.add_argument("vsid")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--flow-id", default="0")
    leaf("status", "the agent's status: BGP sessions, sync, last reconcile, backlog", _status)

    domain = service.parser(sub, AGENT, "routing-domain", help="get, put or delete one routing domain")
    domain_sub = domain.add_subparsers(dest="domain_command", required=True, metavar="ACTION")
    leaf("get", "show one routing domain", _get("routing-domains"), domain_sub).add_argument("name")
    p = leaf("put", "create or replace a routing domain from a file (-f) and/or flags", _put_routing_domain, domain_sub)
    p.add_argument("name", nargs="?", help="default: the file's name")
    p.add_argument("-f", "--file", help="JSON or YAML body ('-' for stdin)")
    p.add_argument("--route-target", action="append", dest="route_targets", metavar="RT",
                   help="ASN:number or IPv4:number; repeat for several")
    p.add_argument("--subnet", action="append", dest="subnets", metavar="VSID=PREFIX[,PREFIX]",
                   help="a virtual subnet, e.g. 5001=10.1.0.0/24,fd00:b::/64; repeat for several")
    leaf("delete", "delete a routing domain (it must have no ports)", _delete("routing-domains"),
         domain_sub).add_argument("name")

    port = service.parser(sub, AGENT, "port", help="get, put or delete one port")
    port_sub = port.add_subparsers(dest="port_command", required=True, metavar="ACTION")
    leaf("get", "show one port", _get("ports"), port_sub).add_argument("name")
    p = leaf("put", "create or replace a port from a file (-f) and/or flags; returns once programmed", _put_port,
             port_sub)
    p.add_argument("name", nargs="?", help="default: the file's name")
    p.add_argument("-f", "--file", help="JSON or YAML body ('-' for stdin)")
    p.add_argument("--interface", help="the VM's tap/veth on this host")
    p.add_argument("--mac")
    p.add_argument("--vsid")
    p.add_argument("--address", action="append", dest="addresses", metavar="CA", help="repeat for several")
    p.add_argument("--mtu")
    p.add_argument("--no-port-security", dest="port_security", action="store_false", default=None,
                   help="turn port security off for this port (on by default)")
    p.add_argument("--allowed-address", action="append", dest="allowed_addresses", metavar="PREFIX",
                   help="another source the VM may send from (e.g. an appliance's prefix); repeat for several")
    leaf("delete", "delete a port", _delete("ports"), port_sub).add_argument("name")
    return sub, common


def _run(args: argparse.Namespace) -> int:
    return service.run(AGENT, "nvfabric ctl", args.action, args)


# ---------------------------------------------------------------------- actions


def _list_routing_domains(client: Client, args: argparse.Namespace) -> None:
    body = client.every_page("/v1/routing-domains", "routing_domains")
    show(args, body, lambda: table(
        "routing domains", ["name", "route targets", "VSID", "prefixes", "gateways", "VRF", "ports"],
        [[domain["name"] if i == 0 else "", " ".join(domain["route_targets"]) if i == 0 else "", str(s["vsid"]),
          " ".join(s["prefixes"]), " ".join(s["gateways"]), domain["status"]["vrf"] if i == 0 else "",
          " ".join(domain["status"]["ports"]) if i == 0 else ""]
         for domain in body["routing_domains"] for i, s in enumerate(domain["subnets"] or [_NO_SUBNET])]))


_NO_SUBNET = {"vsid": "-", "prefixes": [], "gateways": []}


def _list_ports(client: Client, args: argparse.Namespace) -> None:
    body = client.every_page("/v1/ports", "ports")
    show(args, body, lambda: table(
        "ports", ["name", "interface", "MAC", "VSID", "routing domain", "addresses", "MTU", "active",
                  "port security", "dropped"],
        [[p["name"], p["interface"], p["mac"], str(p["vsid"]), p["status"]["routing_domain"] or "-",
          " ".join(p["addresses"]), str(p.get("mtu") or "-"), "yes" if p["status"]["active"] else "no",
          _port_security(p), _dropped(p["status"].get("port_security_drops"))]
         for p in body["ports"]]))


def _port_security(p: dict[str, Any]) -> str:
    if not p.get("port_security", True):
        return "off"
    return " ".join(["on", *(f"+{a}" for a in p.get("allowed_addresses", []))])


def _dropped(drops: dict[str, int] | None) -> str:
    """Only the reasons that dropped something: `spoofed_source=3 dhcp_guard=1`, or `-`."""
    return " ".join(f"{reason}={n}" for reason, n in sorted((drops or {}).items()) if n) or "-"


def _lookup_records(client: Client, args: argparse.Namespace) -> None:
    query = {k: v for k, v in (("routing_domain", args.routing_domain), ("vsid", args.vsid), ("ca", args.ca))
             if v is not None}
    body = client.every_page("/v1/lookup-records", "lookup_records", query)
    show(args, body, lambda: table(
        "lookup records", ["routing domain", "VSID", "CA", "MAC", "PA", "where"],
        [[r["routing_domain"], str(r["vsid"]), r["ca"], r["mac"], r["pa"] or "-",
          f"local port {r['port']}" if r["local"] else "remote"] for r in body["lookup_records"]]))


def _customer_routes(client: Client, args: argparse.Namespace) -> None:
    query = {"routing_domain": args.routing_domain} if args.routing_domain else None
    body = client.every_page("/v1/customer-routes", "customer_routes", query)
    show(args, body, lambda: table(
        "customer routes", ["routing domain", "prefix", "VSID", "next hop", "PA", "origin"],
        [[r["routing_domain"], r["prefix"], str(r["vsid"]), r["next_hop"] or "-", r["pa"] or "-", r["origin"]]
         for r in body["customer_routes"]]))


def _provider_addresses(client: Client, args: argparse.Namespace) -> None:
    body = client.every_page("/v1/provider-addresses", "provider_addresses")
    show(args, body, lambda: table("provider addresses", ["address", "announced as next hop"],
                                     [[a["address"], "yes" if a["next_hop"] else "no"]
                                      for a in body["provider_addresses"]]))


def _trace(client: Client, args: argparse.Namespace) -> None:
    query = {"routing_domain": args.routing_domain, "src": args.src, "dst": args.dst}
    if args.port:
        query["port"] = args.port
    _, body = client.request("GET", "/v1/trace", query=query)
    fields = [("verdict", body["verdict"]), ("reason", body["reason"]), ("VSID", body["vsid"]),
              ("GRE key", body["gre_key"]), ("PA", body["pa"]), ("MAC", body["mac"]), ("device", body["device"]),
              ("route", body["route"]), ("enters by", body["ingress"]), ("source VSID", body["src_vsid"]),
              ("dropped so far", body.get("drops"))]
    show(args, body, lambda: table(f"trace {body['routing_domain']}: {body['src']} -> {body['dst']}",
                                     ["", ""], [[k, "-" if v is None else str(v)] for k, v in fields]))


def _trace_arrival(client: Client, args: argparse.Namespace) -> None:
    _, body = client.request("GET", "/v1/trace/arrival", query={
        "pa": args.pa, "vsid": args.vsid, "src": args.src, "dst": args.dst, "flow_id": args.flow_id})
    fields = [("verdict", body["verdict"]), ("reason", body["reason"]), ("counted as", body["counter"]),
              ("routing domain", body["routing_domain"]), ("GRE key", hex(body["gre_key"]))]
    show(args, body, lambda: table(f"arrival from {body['pa']} VSID {body['vsid']}: {body['src']} -> {body['dst']}",
                                     ["", ""], [[k, "-" if v is None else str(v)] for k, v in fields]))


def _status(client: Client, args: argparse.Namespace) -> None:
    _, body = client.request("GET", "/v1/status")

    def tables() -> list[Any]:
        scalars = [[k, json.dumps(v) if isinstance(v, dict | list) else str(v)] for k, v in body.items()
                   if k not in ("reflectors", "virtual_addresses", "bfd")]
        bfd = {b["peer"]: b["state"] for b in body.get("bfd", [])}
        peers = [[r["address"], r["state"], "yes" if r["end_of_rib"] else "no", bfd.get(r["address"], "-")]
                 for r in body.get("reflectors", [])]
        # who holds each virtual address: a local port, another host (its PA), or nobody ("-")
        held = [[v["routing_domain"], v["address"], v["holder"] or (f"PA {v['pa']}" if v["pa"] else "-"),
                 "" if v["seq"] is None else str(v["seq"])] for v in body.get("virtual_addresses", [])]
        return [table("agent", ["", ""], scalars), table("route reflectors", ["address", "state", "End-of-RIB",
                                                                               "bfd"], peers),
                *([table("virtual addresses", ["routing domain", "address", "holder", "sequence"], held)]
                  if held else [])]

    show(args, body, tables)


def _get(collection: str) -> Action:
    def get(client: Client, args: argparse.Namespace) -> None:
        _, body = client.request("GET", f"/v1/{collection}/{segment(args.name)}")
        show(args, body, lambda: table(args.name, ["", ""], [[k, json.dumps(v)] for k, v in body.items()]))

    return get


def _delete(collection: str) -> Action:
    def delete(client: Client, args: argparse.Namespace) -> None:
        client.request("DELETE", f"/v1/{collection}/{segment(args.name)}")
        done(args, {"deleted": args.name}, f"{collection.rstrip('s').replace('-', ' ')} {args.name} deleted")

    return delete


def _put_routing_domain(client: Client, args: argparse.Namespace) -> None:
    body = file_body(args.file)
    if args.route_targets:
        body["route_targets"] = args.route_targets
    if args.subnets:
        body["subnets"] = [_subnet(text) for text in args.subnets]
    _put(client, args, "routing-domains", body)


def _put_port(client: Client, args: argparse.Namespace) -> None:
    body = file_body(args.file)
    for key in ("interface", "mac", "addresses", "port_security", "allowed_addresses"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    for key in ("vsid", "mtu"):
        if getattr(args, key) is not None:
            body[key] = _number(getattr(args, key))
    _put(client, args, "ports", body)


def _put(client: Client, args: argparse.Namespace, collection: str, body: dict[str, Any]) -> None:
    name = args.name or body.get("name")
    if not isinstance(name, str) or not name:
        raise CtlError("a name is needed: as an argument or as `name` in the file", EXIT_USAGE)
    status, answer = client.request("PUT", f"/v1/{collection}/{segment(name)}", body)
    what = collection.rstrip("s").replace("-", " ")
    done(args, answer, f"{what} {name} {'created' if status == 201 else 'replaced'}")


def _subnet(text: str) -> dict[str, Any]:
    vsid, sep, prefixes = text.partition("=")
    if not sep or not prefixes:
        raise CtlError(f"--subnet {text!r}: expected VSID=PREFIX[,PREFIX] (e.g. 5001=10.1.0.0/24,fd00:b::/64)",
                       EXIT_USAGE)
    # the API validates the values and names the field; a VSID that is no number goes as given
    return {"vsid": _number(vsid), "prefixes": [p.strip() for p in prefixes.split(",")]}


def _number(text: str) -> int | str:
    try:
        return int(text, 10)
    except ValueError:
        return text
