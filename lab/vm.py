"""Run a command inside a VM with Debian's generic kernel when the running kernel lacks VRF or GRE.

The VM (virtme-ng) shares the host's root filesystem over 9p, so the repository and the venv are at
the same paths inside. Python over 9p starts in tens of seconds, so the Python prefix and the venv are
packed into squashfs images (cached, rebuilt when their content changes), attached as virtio disks and
mounted over the same paths before anything starts. See docs/lab.md for the measured figures.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nvfabric.lab import netns


class VmError(RuntimeError):
    """The VM cannot be started; the message says what is missing and how to get it."""


@dataclass(frozen=True)
class VmSettings:
    memory: str = "4G"
    cpus: int = 2
    accel: str = "auto"  # auto | kvm | tcg; NVFABRIC_VM_ACCEL overrides auto


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    path = Path(base) / "nvfabric" / "vm"
    path.mkdir(parents=True, exist_ok=True)
    return path


def kernel_has_dataplane() -> tuple[bool, str]:
    """Whether this kernel can create a VRF, a gretap and an ip6gretap device (tried in a scratch netns)."""
    scratch = f"nvfabric-probe-{os.getpid()}"
    probes = (
        ("vrf", ["link", "add", "probe-vrf", "type", "vrf", "table", "4242"]),
        ("gretap", ["link", "add", "probe-gre", "type", "gretap", "external"]),
        ("ip6gretap", ["link", "add", "probe-gre6", "type", "ip6gretap", "external"]),
    )
    try:
        netns.run(["ip", "netns", "add", scratch])
    except netns.CommandFailed as exc:
        return False, f"cannot create a scratch namespace: {exc.output.strip()}"
    try:
        for what, args in probes:
            result = netns.run(["ip", "-n", scratch, *args], check=False)
            if result.returncode != 0:
                return False, f"this kernel cannot create a {what} device ({result.output.strip()})"
        return True, "this kernel has VRF, gretap and ip6gretap"
    finally:
        netns.run(["ip", "netns", "del", scratch], check=False)


def find_kernel() -> Path:
    """Debian's generic kernel (linux-image-amd64): the cloud flavour has no 9p and cannot mount the root."""
    candidates = [p for p in Path("/boot").glob("vmlinuz-*") if "cloud" not in p.name]
    if not candidates:
        raise VmError("no Debian kernel in /boot: install linux-image-amd64 (`make setup` does)")

    def version_key(path: Path) -> list[int]:
        return [int(n) for n in re.findall(r"\d+", path.name)]

    return max(candidates, key=version_key)


def _vng() -> str:
    found = shutil.which("vng") or shutil.which("vng", path=str(Path(sys.executable).parent))
    if not found:
        raise VmError("virtme-ng's `vng` is not installed in this environment (`make setup` installs it)")
    return found


def kvm_works(kernel: Path) -> bool:
    """KVM is advertised here but hangs or aborts at boot; trust it only if a kernel starts printing."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        return False
    stamp = cache_dir() / f"kvm-{_digest(str(kernel), str(Path(qemu).stat().st_mtime))}"
    if stamp.exists():
        return stamp.read_text() == "yes"
    argv = [qemu, "-accel", "kvm", "-cpu", "host", "-m", "256", "-nographic", "-no-reboot", "-kernel",
            str(kernel), "-append", "console=ttyS0 panic=-1"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    seen = b""
    deadline = time.monotonic() + 8
    os.set_blocking(proc.stdout.fileno(), False)
    while time.monotonic() < deadline and proc.poll() is None and b"Linux version" not in seen:
        chunk = proc.stdout.read(4096)
        seen += chunk or b""
        if not chunk:
            time.sleep(0.1)
    ok = b"Linux version" in seen
    proc.kill()
    proc.wait()
    stamp.write_text("yes" if ok else "no")
    return ok


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _tree_fingerprint(root: Path) -> str:
    """Changes when a file under root is added, removed or rewritten (mtime and size of every entry)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            h.update(f"{dirpath}/{name}\0{st.st_mtime_ns}\0{st.st_size}\n".encode())
    return h.hexdigest()[:16]


def squashfs_image(tree: Path) -> Path:
    """A cached squashfs image of `tree`, rebuilt only when the tree changed."""
    if not shutil.which("mksquashfs"):
        raise VmError("mksquashfs is not installed (Debian package squashfs-tools; `make setup` installs it)")
    image = cache_dir() / f"{tree.name}-{_digest(str(tree))}-{_tree_fingerprint(tree)}.sqfs"
    if image.exists():
        image.touch()  # keeps it from expiring while in use
        return image
    # Older images of this tree are superseded; images of other trees (other clones) expire after a week.
    week_ago = time.time() - 7 * 86400
    for old in cache_dir().glob("*.sqfs"):
        if old.name.startswith(f"{tree.name}-{_digest(str(tree))}-") or old.stat().st_mtime < week_ago:
            old.unlink(missing_ok=True)
    partial = image.with_suffix(f".{os.getpid()}.partial")  # concurrent runs each build their own
    netns.run(["mksquashfs", str(tree), str(partial), "-comp", "lz4", "-noappend", "-quiet", "-no-progress"],
              timeout=600)
    partial.rename(image)
    return image


def python_trees() -> list[Path]:
    """The directories Python needs at start-up: its installation prefix and this venv."""
    trees = [Path(sys.base_prefix).resolve()]
    if sys.prefix != sys.base_prefix:
        trees.append(Path(sys.prefix).resolve())
    return trees


def boot_script(trees: Sequence[Path], argv: Sequence[str], cwd: Path, env: dict[str, str]) -> str:
    lines = ["#!/bin/sh", "set -e", "modprobe squashfs 2>/dev/null || true"]
    # virtme-ng attaches --disk images as virtio disks, in order: vda, vdb, ...
    for i, tree in enumerate(trees):
        dev = f"/dev/vd{chr(ord('a') + i)}"
        lines.append(f"mount -t squashfs -o ro {dev} {shlex.quote(str(tree))}")
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    lines += ["set +e", f"cd {shlex.quote(str(cwd))}", " ".join(shlex.quote(a) for a in argv), "exit $?"]
    return "\n".join(lines) + "\n"


# Passed into the VM: what a command needs to behave as it would on the host, nothing machine-specific.
FORWARDED_ENV = ("CI", "TERM", "COLUMNS", "NVFABRIC_LAB", "PYTEST_ADDOPTS")


def run(argv: Sequence[str], settings: VmSettings = VmSettings(), cwd: Path | None = None) -> int:
    """Boot one VM, run argv inside (same paths, same venv), return its exit status; output streams through."""
    kernel = find_kernel()
    vng = _vng()
    trees = python_trees()
    images = [squashfs_image(t) for t in trees]
    accel = os.environ.get("NVFABRIC_VM_ACCEL", settings.accel)
    if accel == "auto":
        accel = "kvm" if kvm_works(kernel) else "tcg"
    venv_bin = str(Path(sys.prefix) / "bin")
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    env.update(
        PATH=f"{venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        VIRTUAL_ENV=sys.prefix,
        # The source tree stays on read-only 9p: writing bytecode there would fail file by file.
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONUNBUFFERED="1",
        NVFABRIC_IN_VM="1",
    )
    with tempfile.TemporaryDirectory(prefix="nvfabric-vm-", dir="/tmp") as tmp:
        script = Path(tmp) / "boot.sh"
        script.write_text(boot_script(trees, argv, cwd or Path.cwd(), env))
        script.chmod(0o755)
        cmd = [vng, "--run", str(kernel), "--memory", settings.memory, "--cpus", str(settings.cpus)]
        if accel == "tcg":
            cmd.append("--disable-kvm")
        # Raw read-only virtio drives (vng's --disk makes qemu guess the format, and warn about it).
        drives = [f"-drive file={image},format=raw,if=virtio,readonly=on" for image in images]
        if drives:
            cmd.append("--qemu-opts=" + " ".join(drives))
        cmd += ["--exec", str(script)]
        # vng looks for its helper `virtme-run` on PATH.
        vng_env = dict(os.environ, PATH=f"{Path(vng).parent}:{os.environ.get('PATH', '')}")
        # qemu re-opens its standard output by path (/proc/self/fd/1) for the guest's console: were that our
        # own stdout and a file, it would be truncated, erasing what came before (a test phase's summary).
        # A pipe in between keeps the caller's output whole.
        proc = subprocess.Popen(cmd, env=vng_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        out = sys.stdout.buffer
        while chunk := os.read(proc.stdout.fileno(), 65536):
            out.write(chunk)
            out.flush()
        return proc.wait()
