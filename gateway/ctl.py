"""`nvfabric ctl gateway ...`: the operator's client of the gateway's REST API (docs/gateway.md#nvfabric-ctl-gateway).

The same client as the host agent's `nvfabric ctl` (hostagent/ctl.py: its Client, refusal messages, exit
statuses and table rendering); only the paths and the tables differ. `register(subparsers, common)` adds
the `gateway` subtree under a parser: hostagent/ctl.py calls it for `nvfabric ctl gateway ...`, and
gateway/cli.py for `nvfabric gateway ...` (the daemon's own command, with --config).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from nvfabric.hostagent.ctl import Client, CtlError, file_body, show, table
from nvfabric.gateway.config import DEFAULT_LISTEN

DEFAULT_API = f"http://{DEFAULT_LISTEN}"


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    gw = sub.add_parser("gateway", help="talk to the gateway's API: tenants, trace", parents=[common])
    gsub = gw.add_subparsers(dest="gateway_command", required=True, metavar="WHAT")

    def leaf(name: str, help: str, action: Any, parent: Any = gsub) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help, parents=[common])
        p.set_defaults(func=run, action=action)
        return p

    leaf("tenants", "list the tenants with their counters and NAT sessions", _tenants)
    tenant = gsub.add_parser("tenant", help="get, put or delete one tenant")
    tsub = tenant.add_subparsers(dest="tenant_command", required=True, metavar="ACTION")
    leaf("get", "show one tenant", _get, tsub).add_argument("name")
    p = leaf("put", "create or replace a tenant from a JSON or YAML file", _put, tsub)
    p.add_argument("name", nargs="?", help="default: the file's name")
    p.add_argument("-f", "--file", required=True, help="JSON or YAML body ('-' for stdin)")
    leaf("delete", "delete a tenant", _delete, tsub).add_argument("name")
    p = leaf("trace", "the NAT decision for a flow: from a tenant (--tenant) or from outside", _trace)
    p.add_argument("--tenant")
    p.add_argument("proto", choices=("tcp", "udp", "icmp", "icmpv6"))
    p.add_argument("src", help="ADDRESS[:PORT] ([v6]:port)")
    p.add_argument("dst", help="ADDRESS[:PORT]")
    return gw


def common_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--api", default=argparse.SUPPRESS, help=f"the gateway's API URL (env NVFABRIC_GATEWAY_API; "
                                                           f"{DEFAULT_API})")
    p.add_argument("--token", default=argparse.SUPPRESS, help="bearer token (env NVFABRIC_TOKEN)")
    p.add_argument("-o", "--output", choices=("table", "json"), default=argparse.SUPPRESS)
    return p


def run(args: argparse.Namespace) -> int:
    api = getattr(args, "api", None) or os.environ.get("NVFABRIC_GATEWAY_API") or DEFAULT_API
    if not hasattr(args, "output"):
        args.output = "table"
    try:
        args.action(Client(api, getattr(args, "token", None) or os.environ.get("NVFABRIC_TOKEN")), args)
    except CtlError as exc:
        print(f"nvfabric ctl gateway: {exc}", file=sys.stderr)
        return exc.status
    return 0


def _row(t: dict[str, Any]) -> list[str]:
    s = t.get("status", {})
    vsids = ",".join(str(x["vsid"]) for x in t["subnets"])
    snat = ",".join(x["address"] for x in t["snat"]) or "-"
    fips = ", ".join(f"{f['public']}->{f['private']}" for f in t["floating_ips"]) or "-"
    return [t["name"], str(s.get("id", "")), vsids, snat, fips, str(s.get("nat_sessions", "")),
            f"{s.get('packets_out', '')}/{s.get('bytes_out', '')}",
            f"{s.get('packets_in', '')}/{s.get('bytes_in', '')}",
            str(s.get("drops", ""))]


COLUMNS = ["tenant", "id", "VSIDs", "SNAT", "floating IPs", "sessions", "out pkts/bytes", "in pkts/bytes", "drops"]


def _tenants(client: Client, args: argparse.Namespace) -> None:
    _, body = client.request("GET", "/v1/tenants")
    show(args, body, lambda: table("tenants", COLUMNS, [_row(t) for t in body["tenants"]]))


def _get(client: Client, args: argparse.Namespace) -> None:
    _, body = client.request("GET", f"/v1/tenants/{args.name}")
    show(args, body, lambda: table(f"tenant {args.name}", COLUMNS, [_row(body)]))


def _put(client: Client, args: argparse.Namespace) -> None:
    body = file_body(args.file)
    name = args.name or body.get("name")
    if not name:
        raise CtlError("the tenant needs a name (argument or the file's `name`)", 2)
    status, answer = client.request("PUT", f"/v1/tenants/{name}", body)
    show(args, answer, lambda: table(f"tenant {name} {'created' if status == 201 else 'replaced'}", COLUMNS,
                                       [_row(answer)]))


def _delete(client: Client, args: argparse.Namespace) -> None:
    client.request("DELETE", f"/v1/tenants/{args.name}")
    print(f"tenant {args.name} deleted")


def _endpoint(text: str, where: str) -> tuple[str, int]:
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
        return host.rstrip("]"), int(port or 0)
    if text.count(":") == 1:
        host, port = text.split(":")
        try:
            return host, int(port)
        except ValueError:
            raise CtlError(f"{where}: {text!r} is not ADDRESS[:PORT]", 2) from None
    return text, 0


def _trace(client: Client, args: argparse.Namespace) -> None:
    (src, sport), (dst, dport) = _endpoint(args.src, "src"), _endpoint(args.dst, "dst")
    _, body = client.request("POST", "/v1/trace", {"tenant": args.tenant, "proto": args.proto, "src": src,
                                                   "sport": sport, "dst": dst, "dport": dport})
    tr = body.get("translated") or {}
    rows = [["tenant", str(body["tenant"])], ["direction", body["direction"]], ["action", body["action"]],
            ["zone / mark", f"{body['zone']} / {body['mark']}"],
            ["translated", f"{tr.get('src')}:{tr.get('sport')} -> {tr.get('dst')}:{tr.get('dport')}" if tr else "-"],
            ["reason", body["reason"]]]
    show(args, body, lambda: table("NAT decision", ["", ""], rows))
