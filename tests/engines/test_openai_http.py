"""The OpenAI-compatible engine against real servers on 127.0.0.1: exact choice tokens, per-request seeds,
request and token budgets, a server's own limits, several endpoints, and LoRA adapters loaded into a real vLLM
server at run time."""

from __future__ import annotations

import json
import math
import random
import urllib.request
from types import SimpleNamespace

import pytest

from proxyreward_pl.engines import Request, make_engine
from proxyreward_pl.engines.endpoints import AdapterRefused, path_on_server
from proxyreward_pl.engines.openai_http import choice_logprob
from proxyreward_pl.engines.ratelimit import WINDOW, MinuteBudget, parse_duration
from proxyreward_pl.errors import ProxyRewardError
from proxyreward_pl.settings import EngineSettings
from tests.helpers import killed_after, save_random_adapter
from tests.servers.counting import CountingServer
from tests.servers.fault_proxy import FaultProxy
from tests.servers.judge import JudgeServer

MESSAGES = [{"role": "user", "content": "Explain how volcanoes form."}]


def engine(url, model: str = "counted", **kw):
    return make_engine(EngineSettings(engine="openai", model=model, base_url=url, retry_initial=0.01, retry_max=0.05,
                                      **kw))


def ask(eng, requests: list[Request]) -> list:
    out = []
    eng.run(requests, out.append)
    return out


def prompts(n: int, tag: str = "q") -> list[Request]:
    return [Request([{"role": "user", "content": f"{tag} {i}"}], max_tokens=4) for i in range(n)]


# -- choice tokens and seeds ------------------------------------------------------------------------------
def test_choice_tokens_match_exactly_not_by_prefix():
    top = [SimpleNamespace(token=t, logprob=lp) for t, lp in
           ((" True", -0.2), ("Tr", -1.0), ("true", -2.0), ("1", -0.1), ("False", -3.0))]
    assert choice_logprob(top, "True") == pytest.approx(math.log(math.exp(-0.2) + math.exp(-2.0)))
    assert choice_logprob(top, "1") == -0.1
    assert choice_logprob(top, "10") == -math.inf  # "1" only begins "10"
    assert choice_logprob(top, "Unknown") == -math.inf


def test_a_rating_token_1_is_not_read_as_10():
    with JudgeServer(rating=1) as server:  # its top tokens: "1" (-0.1) and "0" (-2.5)
        [res] = ask(engine(server.url, model="judge"),
                    [Request([{"role": "user", "content": "Rate the answer."}], choices=tuple(map(str, range(1, 11))))])
    assert res.choice_logprobs["1"] == pytest.approx(-0.1)
    assert all(res.choice_logprobs[str(i)] == -math.inf for i in range(2, 11))


def test_per_request_seed_false_sends_no_seed():
    with CountingServer() as server:
        ask(engine(server.url), [Request(MESSAGES, max_tokens=4, seed=7)])
        ask(engine(server.url, per_request_seed=False), [Request(MESSAGES, max_tokens=5, seed=7)])
    assert server.bodies[0]["seed"] == 7
    assert "seed" not in server.bodies[1]


# -- budgets and a server's own limits --------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["requests", "tokens"])
def test_a_minute_budget_holds_in_every_window_and_is_mostly_spent(kind):
    """A client that always has work, on a virtual clock: no 60-second window holds more than the budget (tokens
    counted as the replies report them, below the estimates), and over 5 minutes it spends at least 90 % of it."""
    limit, now, rng = (600, 6000)[kind == "tokens"], 0.0, random.Random(0)
    budget = MinuteBudget(limit, burst=1 if kind == "requests" else limit / WINDOW, clock=lambda: now)
    sent: list[tuple[float, float]] = []
    while now < 300:
        estimate = 1 if kind == "requests" else rng.randint(50, 400)
        wait = budget.wait(estimate, now)
        if wait > 0:
            now += wait
            continue
        actual = estimate if kind == "requests" else int(estimate * rng.uniform(0.3, 1.0))
        budget.correct(budget.take(estimate, now), actual)
        sent.append((now, actual))
    most = max(sum(a for t, a in sent if start <= t < start + WINDOW) for start, _ in sent)
    assert most <= limit
    assert sum(a for t, a in sent if t < 300) >= 0.9 * limit * 5


def test_reset_durations_are_read():
    assert parse_duration("6m0s") == 360 and parse_duration("20ms") == pytest.approx(0.02)
    assert parse_duration("1.5s") == 1.5 and parse_duration("2") == 2 and parse_duration("soon") is None


@pytest.mark.slow
def test_a_budget_of_n_requests_per_minute_is_never_exceeded_and_nearly_reached():
    n = 120
    with CountingServer() as server:
        results = ask(engine(server.url, max_requests_per_minute=n, max_concurrency=16), prompts(140))
    assert all(r.ok for r in results)
    assert server.max_in_window(60.0) <= n
    achieved = (len(server.served) - 1) / (server.served[-1] - server.served[0]) * 60
    assert abs(achieved / n - 1) <= 0.1, achieved


def test_a_servers_own_rate_limit_headers_are_honoured():
    """The server allows 10 requests a second and says so in `x-ratelimit-*`; a client that only retried each 429
    after its Retry-After got 60 refusals here, this one stays within a few."""
    with CountingServer(limit=10, window=1.0) as server:
        results = ask(engine(server.url, max_concurrency=4), prompts(40))
    assert all(r.ok for r in results)
    assert server.refused <= 8


def test_a_request_that_can_never_fit_the_token_budget_fails_saying_so():
    with CountingServer() as server:
        [res] = ask(engine(server.url, max_tokens_per_minute=100), [Request(MESSAGES, max_tokens=200)])
    assert not res.ok and "over budget" in res.error and server.bodies == []


# -- several endpoints ------------------------------------------------------------------------------------
def test_requests_spread_over_endpoints_by_least_outstanding():
    with CountingServer(latency=0.05) as a, CountingServer(latency=0.05) as b:
        results = ask(engine([a.url, b.url], max_concurrency=8), prompts(60))
    assert all(r.ok for r in results) and len(a.served) + len(b.served) == 60
    assert 20 <= len(a.served) <= 40


def test_an_endpoint_killed_mid_run_leaves_its_requests_to_the_other():
    with CountingServer(latency=0.02) as upstream, FaultProxy(upstream.url) as a, FaultProxy(upstream.url) as b:
        with killed_after(a, 15) as killed_at:
            results = ask(engine([a.url, b.url], max_concurrency=8, max_retries=3), prompts(200))
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    after = [e for e in b.completions() if e["time"] > killed_at[0]]
    assert len(a.completions()) < 50 and len(after) > 100  # the other endpoint took over the rest


# -- adapters ---------------------------------------------------------------------------------------------
def test_a_server_without_runtime_adapters_is_refused_with_how_to_start_it(tmp_path):
    with CountingServer() as server:  # answers 404 on /v1/load_lora_adapter, as OpenAI's API does
        eng = engine(server.url)
        eng.serve_adapter("iteration-1-abc", tmp_path)
        with pytest.raises(AdapterRefused) as err:
            ask(eng, [Request(MESSAGES, adapter="iteration-1-abc") for _ in range(3)])
    message = str(err.value)
    assert "runtime LoRA updating is disabled" in message
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve MODEL --enable-lora --max-lora-rank" in message
    assert "risky in production" in message
    assert server.bodies == []  # nothing was asked of a policy that is not there


def test_adapter_paths_are_mapped_to_where_the_server_sees_them():
    mapping = "/data/lake/adapters=/mnt/lake/adapters/"
    assert path_on_server("/data/lake/adapters/iteration=1", mapping) == "/mnt/lake/adapters/iteration=1"
    assert path_on_server("/data/lake/adapters/iteration=1", None) == "/data/lake/adapters/iteration=1"
    for outside in ("/data/lake/adapters2/iteration=1", "/elsewhere/iteration=1"):
        with pytest.raises(ProxyRewardError, match="adapter_path_on_server"):
            path_on_server(outside, mapping)


@pytest.mark.slow
def test_served_adapters_are_loaded_by_version_healed_and_unloaded(vllm_server, tiny_model_path, tmp_path):
    """On the real vLLM server: an adapter is loaded from where the server sees it, changes the answers, is
    loaded again if the server lost it, is replaced by its retrained version under a new name, and is unloaded
    when the engine is done; an adapter the server cannot take is refused saying why."""
    folder = save_random_adapter(tiny_model_path, tmp_path / "lake" / "adapters" / "iteration=1", seed=1)
    (tmp_path / "server-view").symlink_to(tmp_path / "lake" / "adapters")
    mapping = f"{tmp_path / 'lake' / 'adapters'}={tmp_path / 'server-view'}"

    def adapters() -> dict[str, str]:
        return {m["id"]: m["root"] for m in vllm_server.models() if m.get("parent")}

    greedy = dict(max_tokens=12, temperature=0.0)
    with FaultProxy(vllm_server.root) as proxy:
        eng = engine(proxy.url, model="tiny-served", server="vllm", per_request_seed=False,
                     adapter_path_on_server=mapping)
        eng.serve_adapter("iteration-1-v1", folder)
        base, tuned = ask(eng, [Request(MESSAGES, **greedy)]) + ask(eng, [Request(MESSAGES, adapter="iteration-1-v1",
                                                                                 **greedy)])
        assert base.ok and tuned.ok and base.texts != tuned.texts
        assert adapters() == {"iteration-1-v1": str(tmp_path / "server-view" / "iteration=1")}

        unload = urllib.request.Request(vllm_server.url + "/unload_lora_adapter", method="POST",
                                        data=json.dumps({"lora_name": "iteration-1-v1"}).encode(),
                                        headers={"Content-Type": "application/json"})
        urllib.request.urlopen(unload, timeout=30).read()  # someone else unloads it (or the server restarted)
        assert adapters() == {}
        [healed] = ask(eng, [Request(MESSAGES, adapter="iteration-1-v1", **greedy)])
        assert healed.ok and adapters() == {"iteration-1-v1": str(tmp_path / "server-view" / "iteration=1")}

        save_random_adapter(tiny_model_path, folder, seed=2)  # retrained in place: a new version, a new name
        eng.serve_adapter("iteration-1-v2", folder)
        [retrained] = ask(eng, [Request(MESSAGES, adapter="iteration-1-v2", **greedy)])
        assert retrained.ok and retrained.texts != tuned.texts
        assert list(adapters()) == ["iteration-1-v2"]
        eng.release()
        assert adapters() == {}
        loads = [e["body"]["lora_name"] for e in proxy.log if e["path"].endswith("/load_lora_adapter")]
        assert loads == ["iteration-1-v1", "iteration-1-v1", "iteration-1-v2"]

    refused = engine(vllm_server.url, model="tiny-served")
    refused.serve_adapter("too-wide", save_random_adapter(tiny_model_path, tmp_path / "r32", rank=32))
    with pytest.raises(AdapterRefused, match="rank is above the server's --max-lora-rank"):
        ask(refused, [Request(MESSAGES, adapter="too-wide")])
    missing = engine(vllm_server.url, model="tiny-served")
    missing.serve_adapter("missing", tmp_path / "nowhere")
    with pytest.raises(AdapterRefused, match="cannot read that folder.*adapter_path_on_server"):
        ask(missing, [Request(MESSAGES, adapter="missing")])
