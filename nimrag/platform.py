"""``nimrag up``: the whole platform on one host, each service its own process on a loopback port.

Starts embed, rerank and the LLM, waits until each is ready, then the pipeline pointed at them. Their logs go to
one stream, each line prefixed with its service. Ctrl-C or SIGTERM stops them all (the pipeline first).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import httpx

START_ORDER = ("embed", "rerank", "llm", "pipeline")
DEFAULT_PORTS = {"embed": 8001, "rerank": 8002, "llm": 8000, "pipeline": 8081}
COLOURS = {"embed": 34, "rerank": 35, "llm": 32, "pipeline": 36}


@dataclass
class Running:
    name: str
    port: int
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _relay(name: str, stream, lock: threading.Lock, colour: bool) -> None:
    prefix = f"\x1b[{COLOURS[name]}m{name:>8}\x1b[0m | " if colour else f"{name:>8} | "
    for raw in iter(stream.readline, b""):
        with lock:
            sys.stdout.write(prefix + raw.decode(errors="replace"))
            sys.stdout.flush()


def pipeline_env(ports: dict[str, int]) -> dict[str, str]:
    return {"NIMRAG_PIPELINE_EMBED_URL": f"http://127.0.0.1:{ports['embed']}/v1",
            "NIMRAG_PIPELINE_RERANK_URL": f"http://127.0.0.1:{ports['rerank']}/v1",
            "NIMRAG_PIPELINE_LLM_URL": f"http://127.0.0.1:{ports['llm']}/v1"}


class Platform:
    def __init__(self, ports: dict[str, int] | None = None, json_logs: bool = False, env: dict | None = None):
        self.ports = {**DEFAULT_PORTS, **(ports or {})}
        self.json_logs = json_logs
        self.env = env or {}
        self.running: list[Running] = []
        self._lock = threading.Lock()

    def start(self, timeout_s: float = 300) -> None:
        for name in START_ORDER[:-1]:
            self._spawn(name)
        for svc in list(self.running):
            self._wait_ready(svc, timeout_s)
        self._wait_ready(self._spawn("pipeline", pipeline_env(self.ports)), timeout_s)

    def _spawn(self, name: str, extra_env: dict | None = None) -> Running:
        env = {**os.environ, **self.env, **(extra_env or {}),
               f"NIMRAG_{name.upper()}_JSON_LOGS": "true" if self.json_logs else "false"}
        process = subprocess.Popen([sys.executable, "-m", "nimrag.cli", "serve", name, "--port",
                                    str(self.ports[name])], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        threading.Thread(target=_relay, args=(name, process.stdout, self._lock, sys.stdout.isatty()),
                         daemon=True).start()
        svc = Running(name, self.ports[name], process)
        self.running.append(svc)
        return svc

    def _wait_ready(self, svc: Running, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if svc.process.poll() is not None:
                raise RuntimeError(f"{svc.name} exited with code {svc.process.returncode} (see its log above)")
            try:
                if httpx.get(svc.url + "/v1/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"{svc.name} was not ready after {timeout_s:.0f} s")

    def stop(self) -> None:
        for svc in reversed(self.running):  # the pipeline first, so nothing calls a stopped service
            if svc.process.poll() is None:
                os.killpg(svc.process.pid, signal.SIGTERM)
        for svc in reversed(self.running):
            try:
                svc.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(svc.process.pid, signal.SIGKILL)
                svc.process.wait()
        self.running.clear()

    def wait(self) -> int:
        """Block until a service exits or a signal arrives; returns the exit code to report."""
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(0.5):
            dead = [s for s in self.running if s.process.poll() is not None]
            if dead:
                print(f"nimrag: {dead[0].name} exited with code {dead[0].process.returncode}; stopping",
                      file=sys.stderr)
                return 1
        return 0
