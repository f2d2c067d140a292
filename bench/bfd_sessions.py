"""CPU cost of BFD sessions: N sessions at 300/300/3 in one `Bfd`, measured once they are all Up.

Runs on the host (root, network namespaces; no VM needed):
    .venv/bin/python bench/bfd_sessions.py [--sessions 100] [--seconds 20] [--interval 300] [--auth keyed-sha1]

Two namespaces joined by a veth, N addresses on each side; session i runs between a_i and b_i, so each
side is one ordinary `Bfd` with N peers (sessions are keyed by peer address), each on its own event-loop
thread in its namespace. The figure is the CPU time of side A's loop thread (`time.thread_time()` read
on that thread) over the period, as a share of one core; side B and the process total are printed too.
Sessions that go down during the period are counted.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from nvfabric.bgp.bfd import BfdAuth, BfdConfig, BfdState, BfdStatus
from nvfabric.bgp.bfd.endpoint import Bfd
from nvfabric.lab.daemons import LoopThread
from nvfabric.lab.peers import Lab, wait_for


def address(side: int, i: int) -> str:
    return f"10.{88 + side}.{i // 250}.{1 + i % 250}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--interval", type=int, default=300, help="ms, transmit and receive")
    parser.add_argument("--auth", choices=["simple", "keyed-sha1", "meticulous-keyed-sha1"])
    args = parser.parse_args()
    n = args.sessions
    auth = BfdAuth(type=args.auth, key_id=1, password="bench") if args.auth else None
    config = BfdConfig(transmit_interval=args.interval, receive_interval=args.interval, multiplier=3, auth=auth)
    lab = Lab(Path(tempfile.mkdtemp()), "bfdb-")
    try:
        a_ns, b_ns = lab.namespace("a"), lab.namespace("b")
        lab.link(a_ns, [f"{address(0, i)}/15" for i in range(n)], b_ns, [f"{address(1, i)}/15" for i in range(n)])
        sides = [(LoopThread(a_ns), Bfd()), (LoopThread(b_ns), Bfd())]

        def ignore(_: BfdStatus) -> None:
            pass

        def setup(side: int, bfd: Bfd) -> object:
            async def go() -> None:
                await bfd.start()
                for i in range(n):
                    bfd.add(address(1 - side, i), config, ignore, local_address=address(side, i))
            return go()

        async def cpu() -> float:
            return time.thread_time()

        def status(side: int) -> list[BfdStatus]:
            thread, bfd = sides[side]

            async def go() -> list[BfdStatus]:
                return bfd.status()
            return thread.run(go())

        for side, (thread, bfd) in enumerate(sides):
            thread.run(setup(side, bfd))
        wait_for(lambda: all(s.state is BfdState.UP and s.transmit_interval == args.interval / 1000
                             for s in status(0) + status(1)), 60, what="all up at the configured rate")
        before = status(0)
        t0 = [thread.run(cpu()) for thread, _ in sides]
        p0, w0 = time.process_time(), time.monotonic()
        time.sleep(args.seconds)
        t1 = [thread.run(cpu()) for thread, _ in sides]
        p1, w1 = time.process_time(), time.monotonic()
        after = status(0)
        wall = w1 - w0
        sent = sum(s.packets_out for s in after) - sum(s.packets_out for s in before)
        received = sum(s.packets_in for s in after) - sum(s.packets_in for s in before)
        downs = sum(s.downs for s in after) - sum(s.downs for s in before)
        busy = t1[0] - t0[0]
        print(f"{n} sessions at {args.interval} ms, auth {args.auth or 'none'}, {wall:.1f} s measured")
        print(f"  side A loop thread: {100 * busy / wall:.2f}% of one core "
              f"({busy / max(sent + received, 1) * 1e6:.1f} us per packet sent or received)")
        print(f"  side B loop thread: {100 * (t1[1] - t0[1]) / wall:.2f}% of one core")
        print(f"  whole process (both sides): {100 * (p1 - p0) / wall:.2f}% of one core")
        print(f"  side A: {sent / wall:.0f} packets/s sent, {received / wall:.0f} received; downs {downs}")
        for thread, bfd in sides:
            thread.run(bfd.stop())
            thread.close()
    finally:
        lab.close()


if __name__ == "__main__":
    main()
