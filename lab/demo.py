"""The demo (`make demo`): bring the default topology up, show who reaches whom, tear it down.

Later components add their scenes (tenants across hypervisors, through the gateway); each scene returns
rows for the summary, and the demo fails when any expectation does not hold.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time

from rich.console import Console
from rich.table import Table

from nvfabric.lab import reach, runner
from nvfabric.lab.guests import Lease4
from nvfabric.lab.topology import Topology


def underlay_table(probes: list[reach.Probe], nodes: list[str]) -> Table:
    table = Table(title="Underlay: ping from row to column (4 = IPv4, 6 = IPv6)")
    table.add_column("from \\ to", style="bold")
    for node in nodes:
        table.add_column(node, justify="center")
    cells: dict[tuple[str, str], list[str]] = {}
    for p in probes:
        mark = ("[green]" if p.reached else "[red]") + str(p.address.version) + ("" if p.reached else "✗") + "[/]"
        cells.setdefault((p.source, p.target), []).append(mark)
    for src in nodes:
        row = [src]
        for dst in nodes:
            row.append("·" if src == dst else " ".join(sorted(set(cells.get((src, dst), ["-"])))))
        table.add_row(*row)
    return table


def expectations_table(title: str, columns: tuple[str, ...], rows: list[tuple[list[str], bool]]) -> Table:
    """One row per expectation (its cells, whether it held); the last cell, what was observed, in green or
    red."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for cells, held in rows:
        table.add_row(*cells[:-1], f"{'[green]' if held else '[red]'}{cells[-1]}[/]")
    return table


def tenants_table(rows: list[tuple[str, str, str, bool, bool]]) -> Table:
    return expectations_table(
        "Tenants blue and red (same addresses, VSIDs 5001/5002 and 6001): who reaches whom",
        ("from VM", "to", "what", "must", "observed"),
        [([src, dst, what, "reach" if expected else "not reach", "reached" if observed else "no answer"],
          expected == observed) for src, dst, what, expected, observed in rows])


def leases_table(leases: dict[str, Lease4 | Exception]) -> Table:
    """What each VM's DHCP client got from its host (lab/guests.py), or why it got nothing."""
    table = Table(title="DHCP: each VM's IPv4 leased from its host's agent by a Debian client")
    for column in ("VM", "client", "address", "router", "MTU", "routes (option 121)", "lease"):
        table.add_column(column)
    for name, got in leases.items():
        if isinstance(got, Lease4):
            routes = ", ".join(f"{net} via {hop}" for net, hop in got.routes)
            table.add_row(name, got.client, str(got.address), str(got.router), str(got.mtu), routes,
                          f"[green]{got.lease_time} s[/]")
        else:
            table.add_row(name, "", "", "", "", "", f"[red]none: {got}[/]")
    return table


def gateway_table(rows: list[tuple[str, str, str, str, str]]) -> Table:
    return expectations_table(
        "Gateway gw1: tenants blue and red (same addresses) to the internet, floating IP inbound",
        ("from", "to", "what", "must be seen as", "seen as"),
        [([src, dst, what, expected, observed], expected == observed) for src, dst, what, expected, observed in rows])


def run(topology: Topology, console: Console | None = None) -> int:
    # emoji=False: rich would turn the ':b:' of an address like fd00:b::12 into an emoji; 120 columns when
    # the output is a file or a pipe (CI logs), so addresses are not cut
    console = console or Console(emoji=False, width=None if sys.stdout.isatty() else 120)
    started = time.monotonic()
    # the summary, not the daemons' chatter: their warnings are sessions closing as each scene stops its
    # agents and gateway (Python prints warnings on stderr when no handler is configured); errors still show
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s", force=True)
    console.rule(f"nvfabric demo: lab {topology.name}")
    runner.up(topology)
    try:
        console.print(f"lab up: {len(topology.nodes)} nodes, {len(topology.links)} links "
                      f"({time.monotonic() - started:.1f} s)")
        namespaces = {n: topology.namespace(n) for n in topology.nodes}
        addresses = {n: reach.global_addresses(ns) for n, ns in namespaces.items()}
        hosts = [n for n, addrs in addresses.items() if addrs]  # a pure switch has no address to reach
        probes = asyncio.run(reach.probe_all({n: namespaces[n] for n in hosts}, {n: addresses[n] for n in hosts}))
        console.print(underlay_table(probes, hosts))
        failed = reach.failures(probes)
        for p in failed:
            console.print(f"[red]unreachable[/]: {p.source} -> {p.target} {p.address}: {p.detail}")
        verdict = "[green]PASS[/]" if not failed else "[red]FAIL[/]"
        console.print(
            f"{verdict}: {len(probes) - len(failed)}/{len(probes)} probes answered "
            f"between {len(hosts)} nodes over IPv4 and IPv6 ({time.monotonic() - started:.1f} s)"
        )
        # two tenants with overlapping addresses across hv1-hv3 (lab/fabric.py); imported here, where it is
        # needed: it loads the agent and the gateway, which the lab's other commands do not
        from nvfabric.lab.fabric import tenants_scene

        rows, leases = tenants_scene(topology)
        console.print(leases_table(leases))
        unleased = [name for name, got in leases.items() if not isinstance(got, Lease4)]
        console.print(f"{'[green]PASS[/]' if not unleased else '[red]FAIL[/]'}: DHCP: "
                      f"{len(leases) - len(unleased)}/{len(leases)} VMs leased their CA from their host")
        console.print(tenants_table(rows))
        wrong = [r for r in rows if r[3] != r[4]]
        console.print(f"{'[green]PASS[/]' if not wrong else '[red]FAIL[/]'}: tenants: "
                      f"{len(rows) - len(wrong)}/{len(rows)} expectations hold ({time.monotonic() - started:.1f} s)")
        # the gateway on gw1, both tenants to the internet and a floating IP inbound (lab/gateway_scene.py)
        from nvfabric.lab.gateway_scene import gateway_scene

        gw_rows = gateway_scene(topology)
        console.print(gateway_table(gw_rows))
        gw_wrong = [r for r in gw_rows if r[3] != r[4]]
        console.print(f"{'[green]PASS[/]' if not gw_wrong else '[red]FAIL[/]'}: gateway: "
                      f"{len(gw_rows) - len(gw_wrong)}/{len(gw_rows)} expectations hold "
                      f"({time.monotonic() - started:.1f} s)")
        return 0 if not failed and not wrong and not gw_wrong and not unleased else 1
    finally:
        runner.down(topology.name)
        console.print(f"lab {topology.name} torn down")
