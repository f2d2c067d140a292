"""`nvfabric lab ...`: up, exec, down, run a command around a lab, run a command in the VM, the demo."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from nvfabric.lab import runner, vm
from nvfabric.lab.topology import TopologyError, load

DEFAULT_TOPOLOGY = Path(__file__).parent / "topologies" / "hnv.clab.yml"


def register(subparsers: argparse._SubParsersAction) -> None:
    lab = subparsers.add_parser("lab", help="build test topologies from network namespaces")
    sub = lab.add_subparsers(dest="lab_command", required=True, metavar="ACTION")

    p = sub.add_parser("up", help="bring a topology up (namespaces, veth links, exec commands)")
    p.add_argument("file", type=Path)
    _add_daemons_flag(p)
    p.set_defaults(func=_up)

    p = sub.add_parser("down", help="tear a lab down (idempotent; also after a crashed run)")
    p.add_argument("lab")
    p.set_defaults(func=_down)

    p = sub.add_parser("exec", help="run a command in a node: nvfabric lab exec LAB NODE -- CMD...")
    p.add_argument("lab")
    p.add_argument("node")
    p.add_argument("command", nargs="*", help="after --: the command and its arguments")
    p.set_defaults(func=_exec)

    p = sub.add_parser("run", help="bring a lab up, run CMD on the host, tear it down; exits with CMD's status")
    p.add_argument("file", type=Path)
    _add_vm_flag(p)
    _add_daemons_flag(p)
    p.add_argument("command", nargs="*", help="after --: the command and its arguments")
    p.set_defaults(func=_run)

    p = sub.add_parser(
        "kernel", help="run CMD on a kernel with VRF and GRE: this one if it has them, else one VM (same paths)"
    )
    _add_vm_flag(p)
    p.add_argument("command", nargs="*", help="after --: the command and its arguments")
    p.set_defaults(func=_kernel)

    p = sub.add_parser("demo", help="the demo: the default topology, who reaches whom, a summary")
    p.add_argument("--file", type=Path, default=DEFAULT_TOPOLOGY)
    _add_vm_flag(p)
    p.set_defaults(func=_demo)


def _add_vm_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--vm", choices=("auto", "always", "never"), default="auto",
        help="auto: use a VM only if this kernel cannot create a VRF and a gretap device",
    )


def _add_daemons_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--daemons", action="store_true",
        help="also start each node's nvfabric daemon (the exec command that starts it) from its bound config file; "
             "logs in /tmp/nvfabric-lab-LAB/NODE.log",
    )


def _command(args: argparse.Namespace) -> list[str]:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    return command


def _fail(message: str, status: int = 1) -> int:
    print(f"nvfabric lab: {message}", file=sys.stderr)
    return status


def _needs_vm(choice: str) -> bool:
    if choice == "always":
        return True
    if choice == "never" or os.environ.get("NVFABRIC_IN_VM"):
        return False
    ok, why = vm.kernel_has_dataplane()
    if not ok:
        print(f"nvfabric lab: {why}; running inside a VM with Debian's kernel", file=sys.stderr)
    return not ok


def _self_argv() -> list[str]:
    """How to run this same `nvfabric` inside the VM (the venv is at the same path there)."""
    return [str(Path(sys.prefix) / "bin" / "nvfabric")]


def _up(args: argparse.Namespace) -> int:
    try:
        topology = load(args.file)
        runner.up(topology, args.daemons)
    except (TopologyError, runner.LabError) as exc:
        return _fail(str(exc))
    print(f"lab {topology.name} is up: {len(topology.nodes)} nodes, {len(topology.links)} links")
    daemons = topology.daemons()
    if daemons and args.daemons:
        print(f"daemons started on {', '.join(daemons)}: logs in {runner.log_dir(topology.name)}")
    elif daemons:
        print(f"daemons not started (--daemons starts them): {', '.join(daemons)}")
    return 0


def _down(args: argparse.Namespace) -> int:
    try:
        removed = runner.down(args.lab)
    except TopologyError as exc:
        return _fail(str(exc))
    print(f"lab {args.lab}: removed {len(removed)} namespaces" if removed else f"lab {args.lab}: nothing to remove")
    return 0


def _exec(args: argparse.Namespace) -> int:
    try:
        argv = runner.exec_argv(args.lab, args.node, _command(args))
    except (TopologyError, runner.LabError) as exc:
        return _fail(str(exc), 2)
    os.execvp(argv[0], argv)
    return 127  # not reached


def _run(args: argparse.Namespace) -> int:
    command = _command(args)
    if not command:
        return _fail("no command given: nvfabric lab run FILE -- CMD...", 2)
    try:
        topology = load(args.file)
    except TopologyError as exc:
        return _fail(str(exc), 2)
    try:
        if _needs_vm(args.vm):
            inner = [*_self_argv(), "lab", "run", str(args.file.resolve()), "--vm", "never",
                     *(["--daemons"] if args.daemons else []), "--", *command]
            return vm.run(inner)
        return runner.run(topology, command, args.daemons)
    except (runner.LabError, vm.VmError) as exc:
        return _fail(str(exc))


def _kernel(args: argparse.Namespace) -> int:
    command = _command(args)
    if not command:
        return _fail("no command given: nvfabric lab kernel -- CMD...", 2)
    try:
        if _needs_vm(args.vm):
            return vm.run(command)
        return subprocess.run(command).returncode
    except vm.VmError as exc:
        return _fail(str(exc))
    except FileNotFoundError:
        return _fail(f"{command[0]}: command not found", 127)


def _demo(args: argparse.Namespace) -> int:
    from nvfabric.lab import demo

    try:
        topology = load(args.file)
        if _needs_vm(args.vm):
            return vm.run([*_self_argv(), "lab", "demo", "--file", str(args.file.resolve()), "--vm", "never"])
        return demo.run(topology)
    except (TopologyError, runner.LabError, vm.VmError) as exc:
        return _fail(str(exc))
