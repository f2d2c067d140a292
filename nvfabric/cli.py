"""The `nvfabric` console script: one argparse tree, each component registers its own subcommand.

A component exposes `register(subparsers)` in its `cli` module; the subcommand sets `func`, which takes
the parsed namespace and returns the process exit status.
"""

from __future__ import annotations

import argparse
import sys

from lab import cli as lab_cli

COMPONENTS = (lab_cli,)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nvfabric", description="Network virtualization (NVGRE, HNV semantics) with a BGP EVPN control plane."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for component in COMPONENTS:
        component.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
