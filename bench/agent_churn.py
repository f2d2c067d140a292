"""The agent under churn: one agent learns a table of remote CAs from our reflector, then follows a steady
churn of moves, adds and withdraws (lab/inject.py) at several rates.

On the host (its kernel has no VRF, so the agent cannot program it):
    sudo .venv/bin/python bench/agent_churn.py [--sizes 1000,10000,100000] [--rates 100,1000,5000]
In the VM, the real agent and its real kernel:
    nvfabric lab kernel --vm always -- .venv/bin/python bench/agent_churn.py --kernel --sizes 1000,10000 \
        --rates 100,1000

Three namespaces on one segment: `rr` (`nvfabric rr`, its own process), `inj` (the injector, its own
process) and `hv`: the agent (hostagent/agent.py as the daemon runs it: one process, one event loop, BGP
to the reflector, nftables in-process). Per size, a fresh set: the injector announces the table and
End-of-RIB; when the agent has it, each rate runs for --seconds, each change stamped when its UPDATE is
written; after the phase, the agent gets --drain seconds to catch up.

Where the agent's kernel is:
- on the host (default): the agent's netlink writes go to a SINK: each op is encoded as for the kernel
  (the Python cost stays) and recorded with its time instead of being sent. This measures the agent's
  Python, not the kernel (bench/netlink_install.py measures that). nftables are real (the decapsulation
  table: in-process libnftables, as in production). Lag = injector's send -> the op recorded.
- `--kernel` (in the VM): the real kernel; lag = injector's send -> the route seen by `ip monitor route`
  in the agent's namespace (bench/scaffold.py: a reader thread in this process stamps each line as it
  arrives; its netlink buffer enlarged, net.core.rmem_max raised for the run; `watch_overflows` counts
  the times it overflowed anyway, each losing lines: then fewer changes count as applied).

Per (size, rate): changes sent; applied (a change counts when its CA's route reached the kernel or the sink
at or after its send: a later change to the same CA before the agent got to it is coalesced, by the client
and the reflector, and is the one that counts); lag p50/p99/max over the applied ones; the agent's CPU per
change (its CPU seconds from the phase's start until it caught up, / changes sent; in brackets the part of
the event loop's thread: the agent's Python, the rest is libnftables' thread, its C and the kernel's nft
commits); whether it kept up
(lag p99 under 1 s and caught up within --drain: no backlog left); the largest backlog the agent reported
during the phase (bgp/client.py Backlog: oldest unapplied change); the agent's RSS. The learning of the
table is reported too (seconds from the first byte to the agent having it, CPU, RSS).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import bisect
import ipaddress
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RR, INJECTOR, HV = "198.51.100.100", "198.51.100.1", "198.51.100.11"
PROVIDER = "100.64.0.0/16"  # where the injector's PAs are (lab/inject.py)
ROUTE_TARGET = "65001:1"
# one routing domain of four virtual subnets: the agent's worst case while its partitions are domains
SUBNETS = tuple(f"{5001 + k},{ROUTE_TARGET},10.{64 + 4 * k}.0.0/14" for k in range(4))
KEPT_UP_P99 = 1.0  # seconds: the target for lag p99


# ------------------------------------------------------------------------------------------ the agent process


class Sink:
    """Stands for the kernel's netlink socket in `vnet.kernel.apply`: encodes every op as apply does (a
    made-up ifindex for each device), acknowledges it, and records when each encap route was done."""

    def __init__(self) -> None:
        # (time, action, CA prefix, PA or None) per encap route op, in columns: the table's 100,000 ops as
        # tuples would be the bench's memory in the agent's RSS (and its fragments after `dump`)
        self.times = array.array("d")
        self.actions: list[str] = []
        self.prefixes: list[str] = []
        self.pas: list[str | None] = []
        self.total = 0
        # what the sink holds, as the kernel would: what the agent's read-back of the kernel (its periodic
        # resync) finds (a dict copy here, without the parsing of a real read: bench/agent_restart.py has that)
        self.state: dict[tuple, Any] = {}

    @property
    def ops(self) -> Iterator[tuple[float, str, str, str | None]]:
        return zip(self.times, self.actions, self.prefixes, self.pas, strict=True)

    def clear(self) -> None:
        self.times = array.array("d")
        self.actions, self.prefixes, self.pas = [], [], []

    async def apply(self, sock: Any, plan: Any) -> Any:
        from nvfabric.vnet.kernel.apply import Report
        from nvfabric.vnet.kernel.diff import Action
        from nvfabric.vnet.kernel.encode import Wire, encoder
        from nvfabric.vnet.kernel.objects import EncapRoute, Sysctl

        class AnyIndex(dict):  # type: ignore[type-arg]
            def __missing__(self, name: str) -> int:
                return 2

        report = Report()
        wire = Wire(sock, AnyIndex())
        t0 = time.perf_counter()
        for op in plan.ops:
            if not isinstance(op.obj, Sysctl):  # (written to /proc, not netlink: a sysctl is recorded only)
                encoder(op.obj).encode(op, wire)
            report.applied.append(op)
            if op.action is Action.DELETE:
                self.state.pop(op.obj.key, None)
            else:
                self.state[op.obj.key] = op.obj
            if isinstance(op.obj, EncapRoute):
                self.times.append(time.monotonic())
                self.actions.append(op.action.value)
                self.prefixes.append(op.obj.prefix)
                self.pas.append(None if op.action is Action.DELETE else op.obj.pa)
        self.total += len(plan.ops)
        report.encode_seconds = report.seconds = time.perf_counter() - t0
        return report


def rusage_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rss_mib() -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def agent_role(config_path: str, sink: bool, ops_path: str, coalesce: float | None = None) -> int:
    """The agent, and a line protocol on stdin/stdout: `status`, `dump` (the sink's ops to ops_path), `quit`."""
    from nvfabric.hostagent.agent import Agent
    from nvfabric.hostagent.config import parse
    from nvfabric.vnet import reconcile
    from nvfabric.vnet.kernel.malloc import map_big_blocks

    map_big_blocks()  # (as `nvfabric agent` does, hostagent/cli.py)
    if coalesce is not None:  # the window's trade (CPU per change against lag), measured with --coalesce
        import nvfabric.hostagent.agent as agent_module
        agent_module.COALESCE = coalesce
    recorder = Sink()
    if sink:
        reconcile.apply = recorder.apply  # type: ignore[assignment]
        read = reconcile.Reconciler.observe

        async def observe(self: reconcile.Reconciler, sysctls: Any, sock: Any = None) -> dict[tuple, Any]:
            return {**(await read(self, sysctls, sock)), **recorder.state}

        reconcile.Reconciler.observe = observe  # type: ignore[method-assign]
    agent = Agent(parse(yaml.safe_load(Path(config_path).read_text())))
    await agent.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"started": True}), flush=True)
    while line := (await reader.readline()).decode().strip():
        if line == "status":
            # (O(1): the agent's parts read directly, status() copies tables; polled during the churn)
            client = agent._client
            backlog = client.backlog().as_dict() if client is not None else {}
            rss, hwm = rss_mib()
            # (answered on the agent's event loop thread: thread_time is that thread's CPU, the agent's Python)
            print(json.dumps({"cpu_s": rusage_cpu(), "loop_s": time.thread_time(), "rss_mib": rss, "hwm_mib": hwm,
                              "backlog": backlog,
                              "ops": recorder.total, "last_sync_s": getattr(agent, "_last_sync", None)}),
                  flush=True)
        elif line == "records":
            print(json.dumps({"records": len(agent.lookup_records()),
                              "remote": sum(1 for r in agent.lookup_records() if not r.local)}), flush=True)
        elif line == "dump":
            with open(ops_path, "w") as f:
                for t, action, prefix, pa in recorder.ops:
                    f.write(json.dumps([t, action, prefix, pa]) + "\n")
            recorder.clear()
            print(json.dumps({"dumped": ops_path}), flush=True)
        elif line == "memory":
            print(json.dumps({"memory": memory(agent, recorder)}), flush=True)
        elif line == "quit":
            break
    await agent.stop()
    return 0


def _pymalloc() -> dict[str, float]:
    """Python's small-object allocator, MiB: in its arenas, in live blocks, free in them (fragments)."""
    import re
    import tempfile

    with tempfile.TemporaryFile("w+") as out:
        saved = os.dup(2)
        os.dup2(out.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read()
    pattern = r"# (bytes in [a-z ]+?|arenas [a-z ]+?)\s+=\s+([\d,]+)"
    found = {k: int(v.replace(",", "")) for k, v in re.findall(pattern, text)}
    return {k: round(v / 2**20, 1) if k.startswith("bytes") else v for k, v in found.items()}


def memory(agent: Any, recorder: Sink) -> dict[str, Any]:
    """Where the agent's memory is (bench/memwalk.py): each part reaches its objects first in this order
    (the route values the speaker decoded are the RIB's; what the client, the learned table... add to them
    is theirs), with RSS before and after."""
    from bench.memwalk import breakdown

    import ctypes

    client = agent._client
    reconciler = agent._reconciler
    rss_before = rss_mib()[0]
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # what the C heap keeps freed is not the agent's
    rss_trimmed = rss_mib()[0]
    pymalloc = _pymalloc()
    parts = breakdown([
        ("speaker RIB", client.speaker.rib if client else None),
        ("speaker (rest)", client.speaker if client else None),
        ("client delivered table", client._delivered if client else None),
        ("client (rest)", client),
        ("learned table", agent._table),
        ("lookup records, partitions", agent._learned_state),
        ("reconciler desired, owner", (reconciler.desired, reconciler.owner) if reconciler else None),
        ("reconciler observed", reconciler.observed if reconciler else None),
        ("reconciler (rest)", reconciler),
        ("decapsulation table", agent._filters),
        ("view, announced", (agent._view, agent._announced, agent._announcing)),
        ("agent (rest)", agent),
        ("bench sink", recorder),
    ])
    return {"parts": parts, "total_mib": round(sum(p["mib"] for p in parts), 1),
            "rss_mib_before": round(rss_before, 1), "rss_mib_trimmed": round(rss_trimmed, 1), "pymalloc": pymalloc,
            "rss_mib_after": round(rss_mib()[0], 1)}


# ------------------------------------------------------------------------------------------ kernel watch


WATCH_RCVBUF = 64 << 20  # bytes: under TCG at 1,000 changes/s the monitor's default buffer overflows


def rmem_max(at_least: int) -> int | None:
    """net.core.rmem_max (what caps a socket's receive buffer) raised to `at_least` if lower: the old value
    (to put back), or None when it was high enough."""
    path = Path("/proc/sys/net/core/rmem_max")
    old = int(path.read_text())
    if old >= at_least:
        return None
    path.write_text(str(at_least))
    return old


# ------------------------------------------------------------------------------------------ orchestration


def agent_config(tmp: Path, resync: float, verify: float) -> dict[str, Any]:
    subnets = [s.split(",") for s in SUBNETS]
    return {
        "asn": 65000, "router_id": HV, "provider_addresses": [HV],
        "provider_prefixes": [PROVIDER, "198.51.100.0/24"],
        "route_reflectors": [{"address": RR, "asn": 65000}],
        "api": {"listen": "127.0.0.1:8500", "token": "bench"},
        "state_dir": str(tmp / "agent-state"),
        # the periodic safety nets (the kernel read back; everything computed again): out of the churn by
        # default (--resync, --verify put them in, to measure what they cost the changes that arrive meanwhile)
        "resync_interval": resync, "verify_interval": verify,
        "routing_domains": [{"name": "blue", "route_targets": [ROUTE_TARGET],
                             "subnets": [{"vsid": int(v), "prefixes": [p]} for v, _, p in subnets]}],
    }


class Pipe:
    """A child process spoken to by lines: JSON lines out, commands in."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, cwd=REPO, start_new_session=True)

    def read(self, timeout: float = 600.0, want: str | None = None) -> dict[str, Any]:
        """The next JSON line (with key `want`, skipping others)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                self.log.flush()
                tail = Path(self.log.name).read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{' '.join(self.proc.args[4:7])}: exited ({self.proc.wait(5)}):\n{tail}")
            try:
                got = json.loads(line)
            except json.JSONDecodeError:
                continue
            if want is None or want in got:
                return got
        raise TimeoutError(f"no {want} line within {timeout} s")

    def say(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def lags(stamps: list[dict[str, Any]], ops: list[tuple[float, str, str, str | None]]) -> tuple[list[float], int]:
    """Each change's lag: its send to the first op at or after it that puts its CA where the change says
    (at its PA; away for a withdraw). (lags of the applied changes, changes never seen applied)."""
    when: dict[tuple[str, str | None], list[float]] = {}
    for t, _action, prefix, pa in ops:
        key = (str(ipaddress.ip_network(prefix).network_address), pa)
        when.setdefault(key, []).append(t)
    for times in when.values():
        times.sort()
    out: list[float] = []
    missing = 0
    for c in stamps:
        times = when.get((c["ip"], c["pa"]), [])
        i = bisect.bisect_left(times, c["sent"])
        if i < len(times):
            out.append(times[i] - c["sent"])
        else:
            missing += 1
    return out, missing


def wait_caught_up(agent: Pipe, delivered_at_least: int, timeout: float,
                   samples: list[dict[str, Any]] | None = None) -> tuple[dict[str, Any] | None, float]:
    """Poll the agent until it has taken and applied everything (`delivered_at_least` route changes at
    least, and nothing more arriving for a while: the reflector may still be sending); (its last status or
    None on timeout, seconds waited)."""
    start = time.monotonic()
    quiet_since: float | None = None
    last = last_ops = -1
    while True:
        agent.say("status")
        status = agent.read(want="cpu_s")
        if samples is not None:
            samples.append(status)
        if os.environ.get("NVFABRIC_BENCH_DEBUG"):
            print(json.dumps(status), file=sys.stderr, flush=True)
        b = status["backlog"]
        # an agent whose passes do not report what they applied (Client.applied): caught up when nothing
        # arrives and the sink sees no op for a while
        applying = b and (b["applied"] == b["delivered"] if b["applied"] or not b["delivered"]
                          else status["ops"] == last_ops)
        idle = b and b["pending"] == 0 and b["delivered"] >= delivered_at_least and applying
        now = time.monotonic()
        if not idle:
            quiet_since = None
        elif quiet_since is None or b["delivered"] != last:
            quiet_since = now
        elif now - quiet_since >= 0.5:
            return status, quiet_since - start
        last = b["delivered"] if b else -1
        last_ops = status["ops"]
        if time.monotonic() - start > timeout:
            return None, time.monotonic() - start
        time.sleep(0.1)


def during(injector: Pipe, agent: Pipe, timeout: float, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Until the injector ends its phase (its line, read by a thread), the agent's status every 0.25 s."""
    got: dict[str, Any] = {}

    def wait() -> None:
        try:
            got.update(injector.read(timeout, want="phase")["phase"])
        except Exception as exc:  # noqa: BLE001 - reported below, in the main thread
            got["error"] = exc

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    while thread.is_alive():
        agent.say("status")
        samples.append(agent.read(want="cpu_s"))
        thread.join(0.25)
    if "error" in got:
        raise got["error"]
    return got


def one_size(size: int, rates: list[int], args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    from nvfabric.lab.peers import Lab, RouteReflector, segment
    from scaffold import RouteWatch  # (here: the agent's process, which runs this file too, does not load it)

    results: list[dict[str, Any]] = []
    lab = Lab(tmp=tmp, prefix=f"nvch{os.getpid() % 10000}-")
    watch: RouteWatch | None = None
    agent: Pipe | None = None
    injector: Pipe | None = None
    try:
        rr_ns, inj_ns, hv_ns = lab.namespace("rr"), lab.namespace("inj"), lab.namespace("hv")
        segment(lab, rr_ns, {rr_ns: [f"{RR}/24"], inj_ns: [f"{INJECTOR}/24"], hv_ns: [f"{HV}/24"]})
        RouteReflector(lab, rr_ns, "rr", {"asn": 65000, "router_id": RR, "cluster_id": RR, "hold_time": 180,
                                          "listen": {"address": RR, "port": 179},
                                          "neighbors": [{"prefix": "198.51.100.0/24", "asn": 65000,
                                                         "client": True}]},
                       start_timeout=120)  # (under TCG on a busy machine its start alone took over 15 s)
        config = tmp / "agent.yaml"
        config.write_text(yaml.safe_dump(agent_config(tmp, args.resync, args.verify)))
        ops_path = tmp / "ops.jsonl"
        if args.kernel:
            watch = RouteWatch(hv_ns, WATCH_RCVBUF)
        agent = Pipe(["ip", "netns", "exec", hv_ns, sys.executable, str(Path(__file__).resolve()), "--role", "agent",
                      "--config", str(config), "--ops", str(ops_path), *([] if args.kernel else ["--sink"]),
                      *([] if args.coalesce is None else ["--coalesce", str(args.coalesce)])],
                     tmp / "agent.log")
        agent.read(120, want="started")
        before = wait_caught_up(agent, 0, 5)[0] or {}
        stamps = tmp / "stamps-{rate}.jsonl"
        injector = Pipe(["ip", "netns", "exec", inj_ns, sys.executable, "-m", "nvfabric.lab.inject",
                         "--reflector", RR, "--local", INJECTOR, *(f"--subnet={s}" for s in SUBNETS),
                         "--provider-prefix", PROVIDER, "--pas", str(args.pas), "--count", str(size),
                         "--rate", ",".join(str(r) for r in rates), "--seconds", str(args.seconds),
                         "--stamps", str(stamps), "--wait-line", "--hold", "100000"], tmp / "inject.log")
        t0 = time.monotonic()
        table = injector.read(600, want="table")["table"]
        learned, _ = wait_caught_up(agent, size, args.learn_timeout)
        learn_s = time.monotonic() - t0
        if learned is None:
            results.append({"size": size, "learned": False, "learn_s": round(learn_s, 1)})
            return results
        agent.say("records")
        records = agent.read(want="records")
        learn = {"size": size, "learn_s": round(learn_s, 2), "table_written_s": table["table_written_s"],
                 "learn_cpu_s": round(learned["cpu_s"] - before.get("cpu_s", 0.0), 2),
                 "remote_records": records["remote"], "rss_mib": round(learned["rss_mib"], 1)}
        print(json.dumps({"learned": learn}), flush=True)
        if args.memory:
            report_memory(agent, f"{size:,} CAs learned")
        if watch is not None:
            watch.take()
        agent.say("dump")
        agent.read(want="dumped")
        for rate in rates:
            injector.read(600, want="ready")
            agent.say("status")
            start = agent.read(want="cpu_s")
            overflows = watch.overflows if watch is not None else 0
            injector.say("go")
            samples: list[dict[str, Any]] = []
            phase = during(injector, agent, args.seconds + 600, samples)
            done, drain_s = wait_caught_up(agent, start["backlog"]["delivered"] + 1, args.drain, samples)
            end = done or samples[-1]
            if watch is not None:
                time.sleep(0.5)  # the monitor's last lines
                ops = watch.take()
            else:
                agent.say("dump")
                agent.read(want="dumped")
                ops = [tuple(json.loads(line)) for line in ops_path.read_text().splitlines()]
            changes = [json.loads(line) for line in Path(str(stamps).format(rate=rate)).read_text().splitlines()]
            lag, missing = lags(changes, ops)  # type: ignore[arg-type]
            p99 = percentile(lag, 0.99)
            cpu = end["cpu_s"] - start["cpu_s"]
            worst = max([s["backlog"].get("oldest_unapplied_s", 0.0) for s in samples] or [0.0])
            result = {
                "size": size, "rate": rate, "sent": len(changes), "applied": len(lag), "not_applied": missing,
                "lag_p50_ms": None if not lag else round(statistics.median(lag) * 1000, 1),
                "lag_p99_ms": None if p99 is None else round(p99 * 1000, 1),
                "lag_max_ms": None if not lag else round(max(lag) * 1000, 1),
                "cpu_us_per_change": round(cpu / max(1, len(changes)) * 1e6, 1),
                # of which the event loop's thread: the agent's Python (and the system calls it makes itself);
                # the rest is libnftables' thread (its C and the kernel's nft commits)
                "loop_us_per_change": round((end["loop_s"] - start["loop_s"]) / max(1, len(changes)) * 1e6, 1),
                "cpu_s": round(cpu, 2),
                "drain_s": round(drain_s, 2) if done else None,
                "kept_up": bool(done) and p99 is not None and p99 < KEPT_UP_P99,
                "worst_backlog_s": round(worst, 2),
                "last_sync_s": end.get("last_sync_s"),
                "rss_mib": round(end["rss_mib"], 1), "peak_rss_mib": round(end["hwm_mib"], 1),
                "table": phase["table"],
                **({"watch_overflows": watch.overflows - overflows} if watch is not None else {}),
            }
            print(json.dumps(result), flush=True)
            results.append(result)
            if not done:
                break  # it did not catch up: a higher rate would only start further behind
        if args.memory:
            report_memory(agent, f"{size:,} CAs after the churn")
        return results
    finally:
        for p in (injector, agent):
            if p is not None:
                if p is agent:
                    try:
                        p.say("quit")
                    except OSError:
                        pass
                p.stop()
        if watch is not None:
            watch.close()
        lab.close()


def report_memory(agent: Pipe, when: str) -> None:
    from bench.memwalk import table

    agent.say("memory")
    found = agent.read(600, want="memory")["memory"]
    print(json.dumps({"memory": when, **found}), flush=True)
    print(f"memory, {when}: {found['total_mib']} MiB reached, RSS {found['rss_mib_before']} MiB "
          f"({found['rss_mib_trimmed']} after malloc_trim, {found['rss_mib_after']} after the walk)\n"
          f"{table(found['parts'])}", file=sys.stderr, flush=True)


def table_md(results: list[dict[str, Any]]) -> str:
    lines = ["| CAs | changes/s | sent | applied | CPU per change (event loop) | lag p50 | lag p99 | kept up "
             "| agent backlog | RSS |", "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in results:
        if "rate" not in r:
            continue
        lines.append(f"| {r['size']:,} | {r['rate']:,} | {r['sent']:,} | {r['applied']:,} | "
                     f"{r['cpu_us_per_change']:,} us ({r['loop_us_per_change']:,}) | "
                     f"{r['lag_p50_ms']} ms | {r['lag_p99_ms']} ms | "
                     f"{'yes' if r['kept_up'] else 'no'}{'' if r['drain_s'] is not None else ' (backlog left)'} | "
                     f"{r['worst_backlog_s']} s | {r['rss_mib']} MiB |")
    return "\n".join(lines)


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # (so the namespaces and processes go)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=["orchestrate", "agent"], default="orchestrate")
    parser.add_argument("--config", help="(agent role) the agent's configuration")
    parser.add_argument("--ops", help="(agent role) where `dump` writes the sink's ops")
    parser.add_argument("--sink", action="store_true", help="(agent role) netlink writes to the sink")
    parser.add_argument("--kernel", action="store_true", help="the real kernel (in the VM): no sink")
    parser.add_argument("--coalesce", type=float, help="the agent's coalescing window in seconds (default: the "
                        "agent's own, hostagent/agent.py COALESCE)")
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--rates", default="100,1000,5000")
    parser.add_argument("--seconds", type=float, default=20.0, help="churn per rate")
    parser.add_argument("--resync", type=float, default=3600.0,
                        help="the agent's resync_interval (the kernel read back); the agent's default is 60 s")
    parser.add_argument("--verify", type=float, default=7 * 86400.0,
                        help="the agent's verify_interval (everything computed again); the agent's default is 1800 s")
    parser.add_argument("--pas", type=int, default=1000, help="hosts the CAs are spread over")
    parser.add_argument("--drain", type=float, default=30.0, help="seconds after a phase to catch up")
    parser.add_argument("--learn-timeout", type=float, default=900.0)
    parser.add_argument("--memory", action="store_true",
                        help="where the agent's memory is (bench/memwalk.py), after learning and after the churn "
                        "(the walk's own memory then stays in the RSS of the rows)")
    args = parser.parse_args()
    if args.role == "agent":
        return asyncio.run(agent_role(args.config, args.sink, args.ops, args.coalesce))
    results: list[dict[str, Any]] = []
    rates = [int(r) for r in args.rates.split(",")]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    from nvfabric.hostagent.agent import COALESCE

    print(json.dumps({"commit": commit.stdout.strip(), "mode": "kernel" if args.kernel else
                      "sink (the agent's Python; netlink writes encoded, not sent)",
                      "coalesce_s": COALESCE if args.coalesce is None else args.coalesce}), flush=True)
    old_rmem = rmem_max(WATCH_RCVBUF) if args.kernel else None  # (in the VM: the machine is the bench's)
    try:
        for size in [int(s) for s in args.sizes.split(",")]:
            with tempfile.TemporaryDirectory(prefix="nvfabric-churn-") as tmp:
                results += one_size(size, rates, args, Path(tmp))
    finally:
        if old_rmem is not None:
            Path("/proc/sys/net/core/rmem_max").write_text(str(old_rmem))
    print(table_md(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
