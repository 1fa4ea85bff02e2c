"""The servers behind an OpenAI-compatible engine: which one takes the next request, how a failing one is
left alone for a while, and LoRA adapters loaded into each of them at run time.

Requests go to the endpoint with the fewest outstanding requests. An endpoint that cannot be reached is left
alone for an exponential back-off; afterwards one request at a time probes it while others are healthy. A
server's own limits (`Retry-After`, `x-ratelimit-*`) pause only that server.

Adapters are loaded by vLLM's runtime API (`POST /v1/load_lora_adapter`; `vllm serve --enable-lora` with
`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`), into each endpoint before its first request that names them.
Every adapter version has its own name: re-loading a name with new weights can serve stale prefix-cache
blocks (vLLM issue #42125). A refusal says why and how to start the server.
"""

from __future__ import annotations

import asyncio
import os
import random

import openai

from ..errors import ProxyRewardError
from .ratelimit import ServerLimits

START_SERVER = ("start it as `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve MODEL --enable-lora --max-lora-rank R` "
                "(R at least the adapter's rank, lora.r); vLLM's docs call runtime adapter updates risky in "
                "production, so give it a server of its own")


class AdapterRefused(ProxyRewardError):
    """A server would not load an adapter: asking again will not help."""


class Endpoint:
    """One server: its client for the current run, its health, its own limits, the adapters loaded into it."""

    def __init__(self, url: str | None, index: int):
        self.url, self.index = url, index
        self.client: openai.AsyncOpenAI | None = None  # one per run (each run has its own event loop)
        self.outstanding = 0
        self.failures = 0
        self.down_until = 0.0
        self.probing = False
        self.limits = ServerLimits()
        self.loaded: dict[str, str] = {}  # adapter name -> the path the server loaded it from
        self.loading: dict[str, asyncio.Future] = {}

    @property
    def name(self) -> str:
        return self.url or "the OpenAI API"

    def wait(self, tokens: float, now: float) -> float:
        return max(self.down_until - now, self.limits.wait(tokens, now), 0.0)

    def unreachable(self, now: float, initial: float, cap: float, rng: random.Random) -> None:
        self.failures += 1
        self.probing = False
        self.down_until = now + min(cap, initial * 2 ** (self.failures - 1)) * (0.5 + rng.random())

    def answered(self) -> None:
        self.failures, self.probing = 0, False


def pick(endpoints: list[Endpoint], tokens: float, now: float, avoid: Endpoint | None) -> Endpoint | float:
    """The endpoint for the next request (fewest outstanding; not `avoid`, the one that just failed it, while
    another will do), or the seconds until one is free."""
    healthy = any(e.failures == 0 for e in endpoints)
    free = [e for e in endpoints if e.wait(tokens, now) <= 0 and not (e.probing and healthy)]
    if avoid is not None and len(free) > 1:
        free = [e for e in free if e is not avoid] or free
    if not free:
        return max(0.001, min(e.wait(tokens, now) for e in endpoints))
    chosen = min(free, key=lambda e: (e.outstanding, e.failures, e.index))
    if chosen.failures and healthy:
        chosen.probing = True  # one request at a time finds out whether it is back
    return chosen


def path_on_server(local: str, mapping: str | None) -> str:
    """Where the server finds the adapter folder `local` (`mapping` = `LOCAL=SERVER` prefixes, or None)."""
    path = os.path.abspath(local)
    if mapping is None:
        return path
    prefix, _, server = (side.strip().rstrip("/") for side in mapping.partition("="))
    if path != prefix and not path.startswith(prefix + "/"):
        raise ProxyRewardError(f"adapter folder {path} is not under {prefix}, the local side of "
                               f"adapter_path_on_server ({mapping!r})")
    return server + path[len(prefix):]


def refusal(endpoint: Endpoint, name: str, path: str, exc: openai.APIStatusError) -> AdapterRefused:
    body = exc.body if isinstance(exc.body, dict) else {}
    message = str(body.get("message") or body.get("detail") or exc.message)
    where = f"{endpoint.name} refused to load LoRA adapter {name!r} from {path} (HTTP {exc.status_code}: {message})"
    if exc.status_code in (404, 405) and "adapter" not in message.lower():
        why = ("it has no /v1/load_lora_adapter: runtime LoRA updating is disabled "
               "(VLLM_ALLOW_RUNTIME_LORA_UPDATING unset)")
    elif "not enabled" in message.lower():
        why = "LoRA is not enabled on it (started without --enable-lora)"
    elif "no adapter found" in message.lower() or "not found" in message.lower():
        return AdapterRefused(f"{where}: the server cannot read that folder; if it sees the lake's adapters under "
                              "another path, set adapter_path_on_server LOCAL=SERVER (e.g. "
                              "--policy.adapter_path_on_server /data/lake/adapters=/mnt/lake/adapters)")
    elif "rank" in message.lower():
        why = "the adapter's rank is above the server's --max-lora-rank"
    else:
        why = "see the server's message"
    return AdapterRefused(f"{where}: {why}. To serve the policy's adapters, {START_SERVER}.")


async def load_adapter(endpoint: Endpoint, name: str, path: str) -> None:
    """Make sure `name` (the weights at `path`, as the server sees it) is loaded. Other names loaded from the
    same folder are older versions of it and are unloaded first."""
    client = endpoint.client
    try:
        listing = await client.get("/models", cast_to=object)
        served = listing.get("data", []) if isinstance(listing, dict) else []
    except openai.APIStatusError:
        served = []
    for model in served:
        if model.get("parent") and model.get("root") == path and model.get("id") != name:
            await unload_adapter(endpoint, model["id"])
    if any(model.get("id") == name for model in served):
        endpoint.loaded[name] = path
        return
    try:
        await client.post("/load_lora_adapter", body={"lora_name": name, "lora_path": path}, cast_to=str)
    except openai.APIStatusError as exc:
        if not (exc.status_code == 400 and "already been loaded" in str(exc.message)):  # loaded by a racing run
            raise refusal(endpoint, name, path, exc) from None
    endpoint.loaded[name] = path


async def unload_adapter(endpoint: Endpoint, name: str) -> None:
    try:
        await endpoint.client.post("/unload_lora_adapter", body={"lora_name": name}, cast_to=str)
    except openai.NotFoundError:  # already gone (another run, or a restarted server)
        pass
    endpoint.loaded.pop(name, None)
