"""`nvfabric ctl gateway ...`: the operator's client of the gateway's REST API (docs/gateway.md#nvfabric-ctl-gateway).

The client, its refusal messages, exit statuses and output are service/ctl.py's, shared with the host
agent's `nvfabric ctl`; here are the gateway's paths and tables. `register(subparsers, common)` adds the
`gateway` subtree under a parser: the command shell (nvfabric/cli.py) calls it for `nvfabric ctl gateway
...`, and gateway/cli.py for `nvfabric gateway ...` (the daemon's own command, with --config).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from nvfabric.gateway.config import DEFAULT_LISTEN
from nvfabric.service import ctl as service
from nvfabric.service.ctl import EXIT_USAGE, Client, CtlError, file_body, segment, show, table

GATEWAY = service.Daemon("gateway", "nvfabric gateway", "nvfabric-gateway", ("NVFABRIC_GATEWAY_API",),
                         ("NVFABRIC_GATEWAY_TOKEN",), f"http://{DEFAULT_LISTEN}")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    # no exit statuses here: `nvfabric gateway` is the daemon too (its own); each command below has them
    gw = sub.add_parser("gateway", help="talk to the gateway's API: status, tenants, trace", parents=[common])
    gsub = gw.add_subparsers(dest="gateway_command", required=True, metavar="WHAT")

    def leaf(name: str, help: str, action: service.Action, parent: Any = gsub) -> argparse.ArgumentParser:
        return service.command(parent, common, run, name, help, action, GATEWAY)

    leaf("tenants", "list the tenants with their counters and NAT sessions", _tenants)
    leaf("status", "the role (serving or standing by, why), BGP and BFD sessions, conntrack replication", _status)
    tenant = service.parser(gsub, GATEWAY, "tenant", help="get, put or delete one tenant")
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
    return service.options(GATEWAY, defaults=False)


def run(args: argparse.Namespace) -> int:
    return service.run(GATEWAY, "nvfabric ctl gateway", args.action, args)


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
    body = client.every_page("/v1/tenants", "tenants")
    show(args, body, lambda: table("tenants", COLUMNS, [_row(t) for t in body["tenants"]]))


def _when(wall: float | None) -> str:
    return "-" if wall is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(wall))


def _flat(value: Any) -> str:
    """A status value on one line: {"sent": 3, "lost": 0} as "sent 3, lost 0"."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {_flat(v)}" for k, v in value.items()) or "-"
    return "-" if value is None else str(value)


def _status(client: Client, args: argparse.Namespace) -> None:
    _, body = client.request("GET", "/v1/status")

    def tables() -> list[Any]:
        r = body["role"]
        role = table("role", ["", ""], [
            ["serving", "yes" if r["serving"] else "no"], ["configured", r["configured"]],
            ["upstream", r["upstream"]], ["reason", r["reason"]], ["since", _when(r["since"])],
            ["changes", str(r["changes"])]])
        sessions = table("BGP sessions", ["peer", "kind", "state", "up for"],
                         [[s["peer"], s["kind"], s["state"], "-" if s["uptime"] is None else f"{s['uptime']:.0f} s"]
                          for s in body["sessions"]])
        bfd = table("BFD sessions", ["peer", "state", "remote", "diagnostic", "detect", "up since", "downs"],
                    [[b["peer"], b["state"], b["remote_state"], b["diagnostic"], f"{b['detect_time_ms']:g} ms",
                      _when(b["up_since"]), str(b["downs"])] for b in body["bfd"]])
        sync = body["conntrack_sync"]
        rows = [[k, _flat(v)] for k, v in sync.items()] if sync is not None else [["", "not configured"]]
        return [role, sessions, bfd, table("conntrack replication", ["", ""], rows)]
    show(args, body, tables)


def _get(client: Client, args: argparse.Namespace) -> None:
    _, body = client.request("GET", f"/v1/tenants/{segment(args.name)}")
    show(args, body, lambda: table(f"tenant {args.name}", COLUMNS, [_row(body)]))


def _put(client: Client, args: argparse.Namespace) -> None:
    body = file_body(args.file)
    name = args.name or body.get("name")
    if not name:
        raise CtlError("the tenant needs a name (argument or the file's `name`)", EXIT_USAGE)
    status, answer = client.request("PUT", f"/v1/tenants/{segment(name)}", body)
    show(args, answer, lambda: table(f"tenant {name} {'created' if status == 201 else 'replaced'}", COLUMNS,
                                       [_row(answer)]))


def _delete(client: Client, args: argparse.Namespace) -> None:
    client.request("DELETE", f"/v1/tenants/{segment(args.name)}")
    service.done(args, {"deleted": args.name}, f"tenant {args.name} deleted")


def _endpoint(text: str, where: str) -> tuple[str, int]:
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
        return host.rstrip("]"), int(port or 0)
    if text.count(":") == 1:
        host, port = text.split(":")
        try:
            return host, int(port)
        except ValueError:
            raise CtlError(f"{where}: {text!r} is not ADDRESS[:PORT]", EXIT_USAGE) from None
    return text, 0


def _trace(client: Client, args: argparse.Namespace) -> None:
    (src, sport), (dst, dport) = _endpoint(args.src, "src"), _endpoint(args.dst, "dst")
    query = {"proto": args.proto, "src": src, "sport": str(sport), "dst": dst, "dport": str(dport)}
    if args.tenant is not None:
        query["tenant"] = args.tenant
    _, body = client.request("GET", "/v1/trace", query=query)
    tr = body.get("translated") or {}
    rows = [["tenant", str(body["tenant"])], ["direction", body["direction"]], ["action", body["action"]],
            ["zone / mark", f"{body['zone']} / {body['mark']}"],
            ["translated", f"{tr.get('src')}:{tr.get('sport')} -> {tr.get('dst')}:{tr.get('dport')}" if tr else "-"],
            ["reason", body["reason"]]]
    site = body.get("site")
    if site is None:
        show(args, body, lambda: table("NAT decision", ["", ""], rows))
        return
    path = [["site", site["site"]], ["VRF lookup", f"{site['vrf']} (table {site['table']}): {site['prefix']}"]]
    if site.get("kind") == "gre":
        key = site.get("key")
        path += [["tunnel", f"{site['device']} (GRE, {'no key' if key is None else f'key {key}'})"]]
    else:
        path += [["tunnel", f"{site['device']} (if_id {site['if_id']})"], ["IKE SA", site["ike_state"] or "none"],
                 ["selectors", f"{', '.join(site.get('local_ts') or []) or '-'} <-> "
                               f"{', '.join(site.get('remote_ts') or []) or '-'}"],
                 ["SPI out / in", f"{site['spi_out'] or '-'} / {site.get('spi_in') or '-'}"]]
    path += [["outer", f"{site['outer']['src'] or '-'} -> {site['outer']['dst']}"],
             ["up", "yes" if site["up"] else "NO: the SA is down"], ["reason", site["reason"]]]
    show(args, body, lambda: [table("NAT decision", ["", ""], rows), table("to the site", ["", ""], path)])
