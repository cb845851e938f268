"""``nimrag up``: the whole platform on one host, each service its own process on a loopback port.

Checks that every port is free, starts embed, rerank and the LLM, waits until each is ready, then the pipeline
pointed at them. A port already held stops it before anything starts, naming the process that holds it (pid and
command line, from the system's socket table through psutil) or saying that this user cannot see it. Each
service's full log goes to ``<log_dir>/<service>.log``; the console (``Console``) gets one line per service when it
is ready, then its warnings and errors only (everything with ``verbose``). A service that exits is an error naming
it and its last log line. However ``nimrag up`` ends, every child is stopped: SIGTERM to its process group, SIGKILL
after a grace period. Even a SIGKILL of ``nimrag up``, which it cannot see coming, stops them: each child watches
its parent pid (nimrag.services.common.parent) and stops itself once it is gone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import httpx
import psutil

from nimrag.console import Console, ServiceLog
from nimrag.errors import load_settings, response_message
from nimrag.services.common.parent import PARENT_LOG_ENV, PARENT_PID_ENV

START_ORDER = ("embed", "rerank", "llm", "pipeline")
STOP_GRACE_S = 15.0  # SIGTERM, then SIGKILL after this
POLL_S = 0.25
COMMAND_WIDTH = 80  # a port holder's command line, shortened to this


class PlatformError(RuntimeError):
    """The platform cannot start or keep running; the message names the service and says why."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM while ``nimrag up`` runs: like Ctrl-C, no ``except Exception`` swallows it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def configured_ports() -> dict[str, int]:
    """Each service's port from its own settings (``NIMRAG_EMBED_PORT``...), as ``nimrag serve`` uses them."""
    from nimrag.cli import SERVICES, _load

    return {name: load_settings(_load(SERVICES[name].settings)).port for name in START_ORDER}


def pipeline_env(ports: dict[str, int]) -> dict[str, str]:
    return {"NIMRAG_PIPELINE_EMBED_URL": f"http://127.0.0.1:{ports['embed']}/v1",
            "NIMRAG_PIPELINE_RERANK_URL": f"http://127.0.0.1:{ports['rerank']}/v1",
            "NIMRAG_PIPELINE_LLM_URL": f"http://127.0.0.1:{ports['llm']}/v1"}


def port_holder(port: int) -> str | None:
    """None when ``port`` can be bound on loopback; otherwise who holds it, as far as this user can see."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no holder
        try:
            probe.bind(("127.0.0.1", port))
            return None
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:  # a privileged port, no loopback address...: no holder to name
                raise
    holder = socket_owner(port)
    try:
        release = httpx.get(f"http://127.0.0.1:{port}/v1/version", timeout=2).json()["release"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return holder
    return f"{holder}, which answers as nimrag {release} (is another `nimrag up` running?)"


def socket_owner(port: int) -> str:
    """The process whose TCP socket is bound to ``port`` ("pid 1234 (python -m http.server 8001)"), from the
    system's socket table; when that does not say (another user's process, or macOS, which shows each user only
    their own), that it cannot be seen."""
    try:
        sockets = [(s.pid, s) for s in psutil.net_connections(kind="tcp")]
    except psutil.AccessDenied:  # macOS: the table is root's; each of our own processes can be asked instead
        sockets = _own_processes_sockets()
    pids = {pid for pid, s in sockets if pid and s.laddr and s.laddr.port == port and not s.raddr}
    if not pids:
        return "a process this user cannot see"
    pid = min(pids)  # several share it (a pre-forking server): the first is usually the one that started them
    try:
        return f"pid {pid} ({_short_command(psutil.Process(pid))})"
    except psutil.NoSuchProcess:
        return f"pid {pid} (exited just now)"


def _own_processes_sockets() -> list[tuple[int, object]]:
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):  # another user's, or gone meanwhile
            found += [(process.pid, s) for s in process.net_connections(kind="tcp")]
    return found


def _short_command(process: psutil.Process, width: int = COMMAND_WIDTH) -> str:
    try:
        argv = process.cmdline() or [process.name()]  # empty for a zombie
    except psutil.AccessDenied:
        with contextlib.suppress(psutil.AccessDenied):
            return process.name()
        return "its command is hidden from this user"
    text = " ".join(shlex.join([Path(argv[0]).name, *argv[1:]]).split())  # the program by name; on one line
    return text if len(text) <= width else text[:width - 1] + "…"


def check_ports(ports: dict[str, int]) -> None:
    seen: dict[int, str] = {}
    for name, port in ports.items():
        if port in seen:
            raise PlatformError(f"{seen[port]} and {name} are both set to port {port}")
        seen[port] = name
        try:
            holder = port_holder(port)
        except OSError as exc:
            raise PlatformError(f"port {port} ({name}) cannot be bound on 127.0.0.1 ({exc.strerror or exc}); give "
                                f"{name} another port with NIMRAG_{name.upper()}_PORT") from None
        if holder:
            raise PlatformError(f"port {port} ({name}) is in use by {holder}; stop it, or give {name} another port "
                                f"with NIMRAG_{name.upper()}_PORT")


@dataclass
class Running:
    name: str
    port: int
    process: subprocess.Popen
    log: ServiceLog
    started: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def exited(self) -> PlatformError:
        last = self.log.last_line()
        return PlatformError(f"{self.name} exited with code {self.process.returncode}"
                             + (f": {last}" if last else "") + f" (full log: {self.log.path})")


class _Signals:
    """SIGINT and SIGTERM raise Interrupted in the main thread, except while ``deferred()`` (spawning a child, or
    stopping them all): then the signal waits until the block ends, so that no child is left unrecorded."""

    def __init__(self) -> None:
        self.depth = 0
        self.pending: int | None = None
        self.previous: dict[int, object] = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()

    def _handle(self, signum: int, _frame) -> None:
        if self.depth:
            self.pending = signum
            return
        raise Interrupted(signum)

    @contextlib.contextmanager
    def deferred(self):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if not self.depth and self.pending is not None:
            signum, self.pending = self.pending, None
            raise Interrupted(signum)


class Platform:
    def __init__(self, ports: dict[str, int] | None = None, json_logs: bool = False, env: dict | None = None,
                 log_dir: Path | None = None, console: Console | None = None):
        ports = dict(ports or {})
        self.ports = ports if set(ports) == set(START_ORDER) else {**configured_ports(), **ports}
        self.json_logs = json_logs
        self.env = env or {}
        self.log_dir = log_dir or _default_log_dir(self.env)
        self.console = console or Console(sys.stderr)
        self.running: list[Running] = []
        self._signals = _Signals()

    @contextlib.contextmanager
    def signals_handled(self):
        """SIGINT/SIGTERM raise Interrupted from here on (main thread only); the previous handlers come back."""
        self._signals.install()
        try:
            yield
        finally:
            self._signals.restore()

    def start(self, timeout_s: float = 300) -> None:
        check_ports(self.ports)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        models = [self._spawn(name) for name in START_ORDER[:-1]]
        self._wait_ready(models, timeout_s)
        self._wait_ready([self._spawn("pipeline", pipeline_env(self.ports))], timeout_s)
        self.check_alive()  # a foreign server on a port could have answered for a child that failed to bind

    def _spawn(self, name: str, extra_env: dict | None = None) -> Running:
        log = ServiceLog(name, self.log_dir / f"{name}.log", self.console)
        env = {**os.environ, **self.env, **(extra_env or {}),
               f"NIMRAG_{name.upper()}_JSON_LOGS": "true" if self.json_logs else "false",
               PARENT_PID_ENV: str(os.getpid()), PARENT_LOG_ENV: str(log.path)}  # it stops if we are SIGKILLed
        with self._signals.deferred():
            process = subprocess.Popen([sys.executable, "-m", "nimrag.cli", "serve", name, "--port",
                                        str(self.ports[name])], env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            svc = Running(name, self.ports[name], process, log)
            self.running.append(svc)
        log.follow(process.stdout)
        return svc

    def _wait_ready(self, services: list[Running], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        waiting = list(services)
        while waiting:
            for svc in list(waiting):
                if svc.process.poll() is not None:
                    raise svc.exited()
                if self._ready(svc):
                    waiting.remove(svc)
                    self._announce(svc)
            if waiting and time.monotonic() > deadline:
                names = ", ".join(f"{s.name} (log: {s.log.path})" for s in waiting)
                raise PlatformError(f"not ready after {timeout_s:.0f} s: {names}")
            if waiting:
                time.sleep(POLL_S)

    @staticmethod
    def _ready(svc: Running) -> bool:
        try:
            response = httpx.get(svc.url + "/v1/health/ready", timeout=2)
        except httpx.TransportError:
            return False
        if response.status_code == 503 and "model_load_failed" in response.text:
            raise PlatformError(f"{svc.name}: {response_message(response)} (full log: {svc.log.path})")
        return response.status_code == 200

    def _announce(self, svc: Running) -> None:
        profile = ""
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            if svc.name != "pipeline":
                profile = f"profile {httpx.get(svc.url + '/v1/metadata', timeout=5).json()['selectedModelProfileId']}, "
        self.console.note(f"{svc.name} ready: {profile}port {svc.port}, {time.monotonic() - svc.started:.1f} s")

    def check_alive(self) -> None:
        for svc in self.running:
            if svc.process.poll() is not None:
                raise svc.exited()

    def wait(self) -> NoReturn:
        """Block until a service exits (PlatformError) or a signal arrives (Interrupted)."""
        while True:
            self.check_alive()
            time.sleep(POLL_S * 2)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop every child, the pipeline first (so nothing calls a stopped service): SIGTERM to its process
        group, SIGKILL to the groups still there after ``grace_s`` or at a signal received meanwhile (a second
        Ctrl-C). Signals wait until it is done."""
        with self._signals.deferred():
            self._signals.pending = None  # the stop a signal asked for is this one
            for svc in reversed(self.running):
                _signal_group(svc.process, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while any(svc.process.poll() is None for svc in self.running):
                if time.monotonic() > deadline or self._signals.pending is not None:
                    for svc in self.running:
                        _signal_group(svc.process, signal.SIGKILL)
                time.sleep(0.05)
            for svc in self.running:
                svc.log.close()
            self.running.clear()
            self._signals.pending = None


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    if process.poll() is None:  # not reaped yet: its pid is still its process group's id
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)


def _default_log_dir(env: dict) -> Path:
    from nimrag.pipeline.settings import PipelineSettings

    data = env.get("NIMRAG_PIPELINE_DATA_PATH")
    return (Path(data) if data else load_settings(PipelineSettings).data_path) / "logs"
