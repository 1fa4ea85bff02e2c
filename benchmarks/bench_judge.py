"""Judge client throughput against a local OpenAI-compatible server with injected latency, in one run.

    python benchmarks/bench_judge.py [--latency 0.2] [--concurrency 32] [--requests 512]
                                     [--rpm 1200] [--rpm-requests 300]                      (make bench-judge)

The server (tests/servers/judge.py, on 127.0.0.1) sleeps `latency` seconds per request; the ideal rate at
concurrency C is C / latency. Prints the achieved requests/s, its ratio to C/L, and the speed-up over a
one-request-at-a-time client (concurrency 1) on the same server. Then the same client under a budget of
`rpm` requests per minute (below what C/L allows): the rate it achieved over the budget, and the most requests
the server saw in any one second against the budget's per-second share (the budget is spread, not burst).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from proxyreward_pl.engines import Request, make_engine  # noqa: E402
from proxyreward_pl.settings import EngineSettings  # noqa: E402
from tests.servers.judge import JudgeServer  # noqa: E402


def run(url: str, concurrency: int, n: int, tag: str, rpm: int | None = None) -> float:
    engine = make_engine(EngineSettings(engine="openai", model="judge", base_url=url, max_concurrency=concurrency,
                                        timeout=30, max_requests_per_minute=rpm))
    requests = [Request([{"role": "user", "content": f"{tag} {i}\n1. statement\nDecide each numbered statement"}],
                        max_tokens=8) for i in range(n)]
    done = []
    t0 = time.perf_counter()
    engine.run(requests, done.append)
    elapsed = time.perf_counter() - t0
    assert len(done) == n and all(r.ok for r in done)
    return n / elapsed


def max_in_window(times: list[float], window: float) -> int:
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--requests", type=int, default=512)
    ap.add_argument("--rpm", type=int, default=1200, help="the rate-limited case's budget, requests per minute")
    ap.add_argument("--rpm-requests", type=int, default=300)
    args = ap.parse_args()
    with JudgeServer(latency=args.latency) as server:
        sequential_n = max(10, int(2 / args.latency))
        seq = run(server.url, 1, sequential_n, "seq")
        conc = run(server.url, args.concurrency, args.requests, "conc")
        peak = server.max_in_flight
        server.log.clear()
        limited = run(server.url, args.concurrency, args.rpm_requests, "rpm", rpm=args.rpm) * 60
        arrivals = sorted(e["time"] for e in server.log)
    ideal = args.concurrency / args.latency
    print(f"latency {args.latency * 1000:.0f} ms, concurrency {args.concurrency}, {args.requests} requests")
    print(f"  one at a time : {seq:7.1f} req/s   (ideal {1 / args.latency:.1f})")
    print(f"  concurrent    : {conc:7.1f} req/s   (ideal C/L {ideal:.1f}; peak in flight {peak})")
    print(f"  achieved / (C/L) = {conc / ideal:.2f}   speed-up over one at a time = x{conc / seq:.1f}")
    print(f"rate-limited: budget {args.rpm} requests/min, concurrency {args.concurrency}, {args.rpm_requests} requests")
    print(f"  achieved      : {limited:7.1f} req/min   achieved / budget = {limited / args.rpm:.3f}")
    print(f"  most in any 1 s: {max_in_window(arrivals, 1.0)} (budget / 60 = {args.rpm / 60:.0f})")


if __name__ == "__main__":
    main()
