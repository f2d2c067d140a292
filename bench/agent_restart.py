"""An agent restarting with many remote CAs in its kernel: how long until it is synced, and what it writes.

Run inside the VM (the host kernel has no VRF/GRE):
    nvfabric lab kernel --vm always -- .venv/bin/python bench/agent_restart.py --remote-cas 10000

The default topology, `nvfabric rr` on rr1 and rr2 (BGP's 90 s hold time), ONE agent (hv1, a thread of this
process) configured with one routing domain `scale` (VSID 7001, 10.64.0.0/12). An injector (lab/inject.py's
session, from hv2's namespace; no agent runs there) announces `--remote-cas` EVPN type-2 routes spread over
`--pas` provider addresses (198.51.97.0 onwards; the agent's provider prefixes are configured to 198.51.96.0/20)
to rr1 and to rr2 (as every host announces to both), then End-of-RIB.

1. First start, empty kernel: hv1's agent starts, learns the table and programs it (time to synced).
2. The time the reflectors need to send the table, at two receivers from hv3's namespace (no agent there):
   - the reference: our BGP client on its own (bgp/client.py: the codec, the RIB, the change stream drained
     as the agent drains it), configured as an agent is, with both reflectors: from its start to End-of-RIB
     from both; and the same with rr1 alone. Any BGP speaker must decode the routes, so this is what the
     restart is compared with (the target: synced within twice that);
   - the floor: a counting session (bench/rr_reflect.py, ~0.1 us per route, it decodes nothing) to rr1,
     from its connect until it has counted every route: how fast the reflector writes its table.
3. The restart: hv1's agent thread is stopped (its kernel state stays) and a new one started on the same
   state directory. Time from the start until `status().synced` with every remote CA as a lookup record and
   the agent idle; where it went (the full kernel read, the desired-state computations, the reconciles,
   sessions and End-of-RIB, from hooks on those functions in this process); the kernel writes: the new
   agent's reconcile totals, the route and neighbour events `ip monitor` sees in hv1 (ours: proto 78,
   permanent and proxy entries), the nftables write transactions; the process's RSS.
Both agents run with `eor_timeout`, `resync_interval` and `verify_interval` of 900 s, so neither a timeout
nor a periodic safety net falls into the measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import pstats
import sys
import time
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rr_reflect  # noqa: E402  (its counting BGP session)
from isolation_switch import NftCount, delta, machine  # noqa: E402
from scaffold import fabric_down, fabric_up  # noqa: E402

from nvfabric.bgp.client import Client, RouteUpdate  # noqa: E402
from nvfabric.bgp.config import GracefulRestartConfig, SpeakerConfig  # noqa: E402
from nvfabric.bgp.routes import Family  # noqa: E402
from nvfabric.bgp.speaker import PeerStatus  # noqa: E402
from nvfabric.hostagent import agent as agent_module  # noqa: E402
from nvfabric.lab import inject  # noqa: E402
from nvfabric.lab.daemons import LoopThread  # noqa: E402
from nvfabric.lab.fabric import HV, RR, Fabric, agent_config  # noqa: E402
from nvfabric.lab.monitor import Monitor  # noqa: E402
from nvfabric.vnet import reconcile  # noqa: E402

VSID = 7001
RT = "65000:9"
SCALE = {"name": "scale", "route_targets": [RT], "subnets": [{"vsid": VSID, "prefixes": ["10.64.0.0/12"]}]}
PROVIDER = "198.51.96.0/20"
RR1 = "198.51.100.100"
LONG = 900.0  # eor_timeout, resync_interval and verify_interval: out of the measurement


class Timeline:
    """Hooks on the agent's steps (this process only): when each ran and for how long."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self.t0 = time.monotonic()

    def mark(self, what: str, **data: Any) -> None:
        at = time.monotonic() - self.t0
        self.events.append((at, what, data))
        if data.get("seconds", 0) >= Stalls.SAY:  # a long step, as it ends (a stall's culprit)
            print(f"  [{at:7.1f} s] {what}: {data['seconds']:.1f} s", flush=True)

    def reset(self) -> None:
        self.events, self.t0 = [], time.monotonic()

    def install(self) -> Timeline:
        timeline = self
        rec = reconcile.Reconciler.reconcile
        on_peer = agent_module.Agent._on_peer

        async def timed_reconcile(r: reconcile.Reconciler, parts: Any, hold: bool = False, *more: Any) -> Any:
            outcome = await rec(r, parts, hold, *more)
            timeline.mark("reconcile", seconds=outcome.seconds, plan=outcome.plan_seconds,
                          apply=outcome.apply_seconds, counts=outcome.counts, full=outcome.full_observe,
                          held=outcome.held, hold=hold, deferred=getattr(outcome, "deferred", 0))
            return outcome

        def peer(a: Any, event: Any) -> None:
            timeline.mark("peer", peer=event.peer, state=event.state)
            on_peer(a, event)

        reconcile.Reconciler.reconcile = timed_reconcile  # type: ignore[method-assign]
        agent_module.Agent._on_peer = peer  # type: ignore[method-assign]
        # when the speaker told the client (the agent consumes the news later: after its first reconcile)
        on_notices = Client._on_notices

        def notices(client: Any, found: Any) -> None:
            found = list(found)
            for notice in found:
                if isinstance(notice, PeerStatus):
                    timeline.mark("session", peer=notice.peer, state=notice.state)
                    if notice.state == "down":
                        print(f"  [{time.monotonic() - timeline.t0:7.1f} s] session to {notice.peer} down: "
                              f"{notice.reason}", flush=True)
            on_notices(client, found)

        Client._on_notices = notices  # type: ignore[method-assign]
        # the steps of a sync, where they are (a tree without one of them just has no figure for it)
        self.time(reconcile.Reconciler, "observe", "observe", count=len)
        self.time(agent_module, "compute", "compute")
        self.time(agent_module.Agent, "_learned", "learned")
        self.time(agent_module.Agent, "_update_decap", "decap")
        self.time(agent_module.Agent, "_announce", "announce")
        self.time(agent_module.Filters, "start", "filters_start")
        self.time(agent_module.PortSecurity, "apply", "port_security")
        return self

    def time(self, owner: Any, name: str, label: str, count: Any = None) -> None:
        original = getattr(owner, name, None)
        if original is None:
            return
        timeline = self
        if asyncio.iscoroutinefunction(original):
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                started = time.monotonic()
                out = await original(*args, **kwargs)
                timeline.mark(label, seconds=time.monotonic() - started, **({"objects": count(out)} if count else {}))
                return out
            setattr(owner, name, timed_async)
        else:
            def timed(*args: Any, **kwargs: Any) -> Any:
                started = time.monotonic()
                out = original(*args, **kwargs)
                timeline.mark(label, seconds=time.monotonic() - started)
                return out
            setattr(owner, name, timed)

    def summary(self) -> dict[str, Any]:
        def total(kind: str, key: str = "seconds") -> float:
            return round(sum(d[key] for _, w, d in self.events if w == kind), 3)

        def first(kind: str, **match: Any) -> float | None:
            return next((round(t, 3) for t, w, d in self.events if w == kind
                         and all(d.get(k) == v for k, v in match.items())), None)

        observes = [d for _, w, d in self.events if w == "observe"]
        reconciles = [d for _, w, d in self.events if w == "reconcile"]
        return {
            "observe_s": [round(d["seconds"], 3) for d in observes],
            "observed_objects": [d["objects"] for d in observes],
            "computes": sum(1 for _, w, _ in self.events if w == "compute"), "compute_s": total("compute"),
            **{f"{label}_s": total(label) for label in ("learned", "decap", "announce", "filters_start",
                                                        "port_security")},
            "reconciles": len(reconciles), "reconcile_s": total("reconcile"),
            "plan_s": total("reconcile", "plan"), "apply_s": total("reconcile", "apply"),
            "established_rr1": first("peer", peer=RR1, state="established"),
            "end_of_rib_rr1": first("peer", peer=RR1, state="end-of-rib"),
            "established_first": min(up) if (up := [t for t, w, d in self.events
                                                    if w == "session" and d["state"] == "established"]) else None,
            "end_of_rib_last": max(eor) if (eor := [t for t, w, d in self.events
                                                    if w == "session" and d["state"] == "end-of-rib"]) else None,
            "end_of_rib_consumed": max(eor) if (eor := [t for t, w, d in self.events
                                                        if w == "peer" and d["state"] == "end-of-rib"]) else None,
        }


class Stalls:
    """Where the agent's loop stood still: Python's full (generation 2) collections in this process, timed by
    `gc.callbacks` (they stop every thread: the GIL is held), and the agent loop's lag, a sampler on it
    that wakes every `TICK` s and notes how late it woke. Either above `SAY` s is printed as it happens, so a
    run whose sessions expire shows what the loop did meanwhile."""

    TICK = 0.25
    SAY = 2.0

    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline
        self.full: list[tuple[float, float, int]] = []  # (timeline time at the end, seconds, collected)
        self.lags: list[tuple[float, float]] = []  # (timeline time, seconds late)
        self._began = 0.0
        gc.callbacks.append(self._on_gc)

    def reset(self) -> None:
        self.full, self.lags = [], []

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._began = time.perf_counter()
            return
        seconds = time.perf_counter() - self._began
        at = time.monotonic() - self.timeline.t0
        self.full.append((at, seconds, info["collected"]))
        if seconds >= self.SAY:
            print(f"  [{at:7.1f} s] full garbage collection: {seconds:.1f} s ({info['collected']:,} collected, "
                  f"{gc.get_freeze_count():,} frozen)", flush=True)

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        async def sample() -> None:
            while True:
                due = time.monotonic() + self.TICK
                await asyncio.sleep(self.TICK)
                late = time.monotonic() - due
                if late >= self.SAY:
                    at = time.monotonic() - self.timeline.t0
                    self.lags.append((at, late))
                    print(f"  [{at:7.1f} s] the agent's loop stood still for {late:.1f} s", flush=True)

        asyncio.run_coroutine_threadsafe(sample(), loop)

    def summary(self) -> dict[str, Any]:
        return {"full_gcs": len(self.full), "full_gc_s": round(sum(s for _, s, _ in self.full), 2),
                "full_gc_max_s": round(max((s for _, s, _ in self.full), default=0.0), 2),
                "loop_stalls": [(round(t, 1), round(s, 1)) for t, s in self.lags],
                "frozen": gc.get_freeze_count()}


def rss() -> dict[str, int]:
    """This process's resident set and its peak, in MiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) // 1024
    return out


def settled(fabric: Fabric, count: int, timeout: float) -> float:
    """Until hv1's agent is synced (status and readiness), holds `count` remote lookup records of `scale`,
    and is idle; returns when."""
    agent = fabric.agents["hv1"]

    def remote_records(a: Any) -> int:
        # O(routing domains), not `lookup_records()` (every record built and sorted: seconds of the agent's loop
        # at 100,000 under TCG, charged to the agent before; `scale` is the one routing domain with remote CAs)
        return a._learned_state.counts()[1]  # bench-only peek

    def probe(a: Any) -> bool:
        # cheap first: this runs on the agent's loop
        if a.readiness() or a._lock.locked() or a._dirty.is_set():  # bench-only peek
            return False
        return remote_records(a) == count and a.status().synced

    end = time.monotonic() + timeout
    said = time.monotonic()
    while not agent.read(probe, timeout=max(1.0, end - time.monotonic())):
        if time.monotonic() > end:
            raise TimeoutError(f"hv1 did not settle on {count} remote CAs within {timeout:.0f} s")
        if time.monotonic() - said > 20:  # progress, so a run that cannot settle shows why
            said = time.monotonic()
            where = agent.read(lambda a: (remote_records(a), a.readiness(), a.status()),
                               timeout=max(1.0, end - said))
            status = where[2]
            print(f"  ... {where[0]:,} remote lookup records, not ready: {where[1]}; learned routes "
                  f"{status.learned_routes:,}"
                  f", waiting {len(agent.agent._incoming) if agent.agent else '?':,}, sessions "  # bench-only peek
                  f"{[(r.address, r.state, r.end_of_rib) for r in status.reflectors]}, backlog {status.backlog}",
                  flush=True)
        time.sleep(0.2)
    return time.monotonic()


class Profile:
    """cProfile on the agent's loop thread: enabled as `Agent.start` begins (on that thread: a profiler hooks the
    thread that enables it), disabled on that thread once synced."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.profiler = cProfile.Profile()

    def install(self) -> Profile:
        start, profiler = agent_module.Agent.start, self.profiler

        async def profiled_start(a: Any) -> None:
            agent_module.Agent.start = start  # type: ignore[method-assign]  (this start only)
            profiler.enable()
            await start(a)

        agent_module.Agent.start = profiled_start  # type: ignore[method-assign]
        return self

    def finish(self, handle: Any) -> None:
        handle.read(lambda a: self.profiler.disable())
        self.profiler.dump_stats(self.path)
        pstats.Stats(self.path).sort_stats("tottime").print_stats(40)


def start_agent(fabric: Fabric, timeline: Timeline, stalls: Stalls, timeout: float) -> float:
    timeline.reset()
    stalls.reset()
    fabric.start_agent("hv1", start_timeout=timeout, routing_domains=[SCALE],
                       provider_prefixes=[PROVIDER, "2001:db8::/64"], eor_timeout=LONG, resync_interval=LONG,
                       verify_interval=LONG)
    returned = time.monotonic() - timeline.t0
    loop = fabric.agents["hv1"].loop
    assert loop is not None
    stalls.watch(loop)
    return returned


def receiver_time(fabric: Fabric, count: int, timeout: float) -> dict[str, float]:
    """A plain counting session from hv3 to rr1: seconds to established, and from established to the
    last route counted."""
    thread = LoopThread(fabric.ns("hv3"))

    async def receive() -> dict[str, float]:
        t0 = time.monotonic()
        peer = await rr_reflect.connect(HV["hv3"], HV["hv3"], t0 + 60)
        up = time.monotonic()
        took, counts = await rr_reflect.wait_all([peer], "announced", count, timeout)
        done = time.monotonic()
        assert peer.transport is not None
        peer.transport.close()
        if took is None:
            raise TimeoutError(f"the receiver counted {counts} of {count} routes")
        return {"connect_s": round(up - t0, 3), "table_s": round(done - up, 3), "total_s": round(done - t0, 3)}

    try:
        return thread.run(receive(), timeout + 90)
    finally:
        thread.close()


def client_time(fabric: Fabric, count: int, timeout: float, only: str | None = None) -> dict[str, Any]:
    """The reference: our BGP client on its own (bgp/client.py, no agent), configured as an agent is (hv3's
    configuration: both reflectors, the same families, graceful restart), from hv3's namespace. It decodes
    every route as any BGP speaker must (the codec, the RIB, the client's change stream, drained as the agent
    drains it). Seconds from the first session established to End-of-RIB from every reflector, per reflector
    too (established -> End-of-RIB), and the routes it holds then. `only`: that one reflector alone (what one
    reflector needs to send the table to one receiver)."""
    config = agent_config(fabric.topology, "hv3", fabric.dir)
    thread = LoopThread(fabric.ns("hv3"))

    async def receive() -> dict[str, Any]:
        client = Client(SpeakerConfig(
            asn=config.asn, router_id=config.router_id, families=(Family.L2VPN_EVPN,),
            neighbors=tuple(r.neighbor() for r in config.route_reflectors if only in (None, r.address)),
            graceful_restart=GracefulRestartConfig(enabled=True, forwarding_preserved=True)))
        peers = {r.address for r in config.route_reflectors if only in (None, r.address)}
        up: dict[str, float] = {}
        eor: dict[str, float] = {}
        incoming: dict[Any, Any] = {}
        t0 = time.monotonic()
        await client.start()

        async def consume() -> None:
            async for event in client.events():
                if isinstance(event, PeerStatus):
                    if event.state == "established":
                        up.setdefault(event.peer, time.monotonic())
                    elif event.state == "end-of-rib":
                        eor.setdefault(event.peer, time.monotonic())
                        if eor.keys() >= peers:
                            return
                elif isinstance(event, RouteUpdate):
                    incoming[event.key] = event.route  # (as the agent keeps them for its syncer)

        try:
            await asyncio.wait_for(consume(), timeout)
        finally:
            await client.stop()
        first = min(up.values())
        return {"connect_s": round(first - t0, 3), "table_s": round(max(eor.values()) - first, 3),
                "per_session_s": {p: round(eor[p] - up[p], 3) for p in sorted(eor)},
                "routes": sum(1 for r in incoming.values() if r is not None)}

    try:
        return thread.run(receive(), timeout + 90)
    finally:
        thread.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--remote-cas", type=int, default=10000)
    parser.add_argument("--pas", type=int, default=500,
                        help="provider addresses the remote CAs are spread over (198.51.97.0 onwards: at most 768, "
                             "below the lab's own 198.51.100.0/24)")
    parser.add_argument("--timeout", type=float, default=1800, help="per phase, seconds")
    parser.add_argument("--profile", metavar="FILE",
                        help="profile the restarted agent's loop thread (cProfile, from its start until synced: "
                             "it runs slower) and write the statistics to FILE (pstats; the top 40 printed)")
    args = parser.parse_args()
    print(f"machine: {machine()}", flush=True)
    count_nft = NftCount().install()
    timeline = Timeline().install()
    stalls = Stalls(timeline)
    fabric = fabric_up()
    injector: LoopThread | None = None
    result: dict[str, Any] = {"remote_cas": args.remote_cas, "pas": args.pas}
    try:
        fabric.start_reflectors(hold_time=90)
        spec = inject.Spec((inject.Subnet(VSID, RT, IPv4Network("10.64.0.0/12")),), IPv4Network(PROVIDER), args.pas)
        lab = IPv4Network("198.51.100.0/24")  # the hosts, reflectors and gateways: a route there is not remote
        if any(spec.pa(j) in lab for j in range(args.pas)):
            raise SystemExit(f"--pas {args.pas}: the provider addresses would reach into {lab}")
        churn = inject.Churn.initial(spec, args.remote_cas)
        injector = LoopThread(fabric.ns("hv2"))
        # to both reflectors, as every host of a fabric announces: whichever End-of-RIB the agent hears first
        # comes with the whole table (a reflector without it would end the agent's hold early)
        for reflector in RR.values():
            session = injector.run(inject.connect(reflector, HV["hv2"]), 90)
            written, seconds = injector.run(inject.announce_table(session, churn), args.timeout)
        result["injected"] = {"routes": written, "written_s": round(seconds, 3)}
        print(f"injector: {written:,} routes written to each reflector ({seconds:.1f} s to the last)", flush=True)
        for node in RR:  # what each reflector holds before the agent starts
            summary = fabric.reflector_api(node, "/v1/summary") or {}
            print(f"{node}: {json.dumps(summary)[:600]}", flush=True)

        started = start_agent(fabric, timeline, stalls, args.timeout)
        try:
            done = settled(fabric, args.remote_cas, args.timeout) - timeline.t0
        finally:
            print(f"first start: {json.dumps(stalls.summary())}", flush=True)
        first = fabric.agents["hv1"].read(lambda a: a.status())
        result["first_start"] = {"start_returned_s": round(started, 3), "synced_s": round(done, 3),
                                 "totals": first.totals, **timeline.summary(), **stalls.summary()}
        print(f"first start (empty kernel): synced in {done:.1f} s, {json.dumps(result['first_start'])}", flush=True)

        result["receiver"] = receiver_time(fabric, args.remote_cas, args.timeout)
        print(f"plain receiver from hv3: {json.dumps(result['receiver'])}", flush=True)
        result["client"] = client_time(fabric, args.remote_cas, args.timeout)
        print(f"our BGP client alone from hv3: {json.dumps(result['client'])}", flush=True)
        result["client_rr1"] = client_time(fabric, args.remote_cas, args.timeout, only=RR1)
        print(f"our BGP client alone from hv3, rr1 only: {json.dumps(result['client_rr1'])}", flush=True)

        fabric.stop_agent("hv1")
        gc.collect()
        rss_before = rss()
        monitor = Monitor(fabric.ns("hv1"))
        nft_before = count_nft.snapshot()
        profile = Profile(args.profile).install() if args.profile else None
        started = start_agent(fabric, timeline, stalls, args.timeout)
        done = settled(fabric, args.remote_cas, args.timeout) - timeline.t0
        if profile is not None:
            profile.finish(fabric.agents["hv1"])
        status = fabric.agents["hv1"].read(lambda a: a.status())
        events = monitor.stop()
        restart = {"start_returned_s": round(started, 3), "synced_s": round(done, 3), "totals": status.totals,
                   "route_neigh_events": len(events), "ours": monitor.ours()[:10],
                   "nft": delta(nft_before, count_nft.snapshot()), "rss_mib_before": rss_before,
                   "rss_mib_after": rss(), **timeline.summary(), **stalls.summary()}
        result["restart"] = restart
        print(f"restart: {json.dumps(restart)}", flush=True)

        floor = result["receiver"]["table_s"]
        reference = result["client"]["connect_s"] + result["client"]["table_s"]
        writes = sum(status.totals.get(k, 0) for k in ("create", "replace", "delete"))
        session = (None if restart["established_first"] is None or restart["end_of_rib_last"] is None
                   else restart["end_of_rib_last"] - restart["established_first"])
        print("\n| remote CAs | counting receiver: table (s) | our BGP client alone: start -> End-of-RIB from both "
              "(s) | restart: `Agent.start` returns (s) | agent's sessions: established -> End-of-RIB from both (s) "
              "| synced (s) | synced / client alone | full kernel read (s) | computes (s) | reconciles (s) | kernel "
              "writes | our route/neigh events | nft writes | RSS before -> after (MiB) |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        print(f"| {args.remote_cas:,} | {floor:.2f} | {reference:.1f} | {restart['start_returned_s']:.1f} | "
              f"{session if session is not None else float('nan'):.1f} | {done:.1f} | {done / reference:.2f} | "
              f"{' + '.join(f'{s:.1f}' for s in restart['observe_s'])} | {restart['computes']}: "
              f"{restart['compute_s']:.1f} | {restart['reconciles']}: {restart['reconcile_s']:.1f} | {writes} | "
              f"{len(monitor.ours())} | {restart['nft'].get('transactions', 0)} | "
              f"{rss_before.get('VmRSS')} -> {restart['rss_mib_after'].get('VmRSS')} |", flush=True)
        print("\nraw: " + json.dumps(result))
        return 0
    finally:
        count_nft.uninstall()
        for node in RR:  # the reflectors' own account of their sessions (a lost one says why there)
            log = fabric.dir / f"{node}.log"
            lines = log.read_text(errors="replace").splitlines() if log.exists() else []
            said = [line for line in lines if "session" in line or "hold" in line or "NOTIFICATION" in line]
            print(f"{node}.log: {len(lines)} lines; about sessions:", *said[-12:], sep="\n  ", flush=True)
        fabric_down(fabric, injector)


if __name__ == "__main__":
    raise SystemExit(main())
