"""The `nvfabric` console script: one argparse tree, each component registers its own subcommand.

A component exposes `register(subparsers)` in its `cli` module; the subcommand sets `func`, which takes
the parsed namespace and returns the process exit status. `nvfabric ctl gateway ...` is wired here, the
one place that imports both daemons: the gateway's client goes beside the agent's under `ctl`.
"""

from __future__ import annotations

import argparse
import sys

from nvfabric.bgp import cli as bgp_cli
from nvfabric.bgp.reflector import cli as rr_cli
from nvfabric.gateway import cli as gateway_cli
from nvfabric.gateway import ctl as gateway_ctl
from nvfabric.hostagent import cli as agent_cli
from nvfabric.hostagent import ctl as ctl_cli
from nvfabric.lab import cli as lab_cli
from nvfabric.service import version



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nvfabric", description="Network virtualization (NVGRE, HNV semantics) with a BGP EVPN control plane."
    )
    parser.add_argument("--version", action="version", version=f"nvfabric {version()}")
    sub = parser.add_subparsers(dest="component", required=True, metavar="COMMAND")
    for component in (lab_cli, bgp_cli, agent_cli, rr_cli):
        component.register(sub)
    ctl_sub, _ = ctl_cli.register(sub)
    gateway_ctl.register(ctl_sub, gateway_ctl.common_options())  # `nvfabric ctl gateway ...`
    gateway_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" is a command to run, never options of ours: argparse's REMAINDER
    # would otherwise swallow options that follow a positional (`lab run FILE --vm never -- CMD`).
    trailing: list[str] | None = None
    if "--" in argv:
        cut = argv.index("--")
        argv, trailing = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    if trailing is not None:
        args.command = trailing
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
