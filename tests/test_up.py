"""``nimrag up`` as a person runs it: a held port is named before anything starts, a service that dies is named
with its last log line, and SIGTERM or Ctrl-C during start-up leaves no service running and no port held."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nimrag.console import Console, record_level
from nimrag.errors import Exit
from nimrag.services.common.errors import StartupError
from nimrag.services.common.parent import PARENT_PID_ENV, watch_parent
from tests.conftest import REPO, free_port, model_cache

SERVICES = ("embed", "rerank", "llm", "pipeline")


def up_env(tmp_path: Path, ports: dict[str, int], **extra: str) -> dict[str, str]:
    return {**os.environ, "NIM_CACHE_PATH": str(model_cache()), "NIMRAG_PIPELINE_DATA_PATH": str(tmp_path / "data"),
            **{f"NIMRAG_{name.upper()}_PORT": str(port) for name, port in ports.items()}, **extra}


def start_up(tmp_path: Path, ports: dict[str, int], *args: str, **extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nimrag.cli", "up", *args], cwd=REPO, text=True,
                            env=up_env(tmp_path, ports, **extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc: the services run as direct children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_a_held_port_is_named_and_nothing_starts(tmp_path):
    ports = {name: free_port() for name in SERVICES}
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports["rerank"]))
        holder.listen()
        up = start_up(tmp_path, ports)
        out, err = up.communicate(timeout=120)
    assert up.returncode == 6, err
    assert f"port {ports['rerank']} (rerank) is in use" in err and "NIMRAG_RERANK_PORT" in err
    assert "Traceback" not in err and "platform ready" not in err
    assert not (tmp_path / "data" / "logs" / "embed.log").exists()  # checked before the first service started


def test_a_held_port_names_the_process_that_holds_it(tmp_path):
    ports = {name: free_port() for name in SERVICES}
    command = ["-m", "http.server", str(ports["embed"]), "--bind", "127.0.0.1"]
    server = subprocess.Popen([sys.executable, *command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not listening(ports["embed"]):
            assert server.poll() is None and time.monotonic() < deadline, "http.server did not start"
            time.sleep(0.05)
        up = start_up(tmp_path, ports)
        out, err = up.communicate(timeout=120)
    finally:
        server.kill()
        server.wait()
    assert up.returncode == Exit.PLATFORM, err
    shown = " ".join([Path(sys.executable).name, *command])
    held = f"port {ports['embed']} (embed) is in use by pid {server.pid} ({shown})"
    assert held in err and "NIMRAG_EMBED_PORT" in err, err
    assert "answers as nimrag" not in err  # http.server has no /v1/version
    assert not (tmp_path / "data" / "logs" / "embed.log").exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root, to become another user")
def test_a_port_held_by_another_users_process_says_it_cannot_be_seen():
    with socket.socket() as holder:  # held by this (root's) process; looked up as nobody
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        # imports first: the interpreter's own files may be unreadable to nobody
        lookup = ("import os; from nimrag.platform import socket_owner; os.setgid(65534); os.setuid(65534); "
                  f"print(socket_owner({port}))")
        as_nobody = subprocess.run([sys.executable, "-c", lookup], cwd=REPO, capture_output=True, text=True,
                                   timeout=60)
        as_root = subprocess.run([sys.executable, "-c", lookup.replace("os.setgid(65534); os.setuid(65534); ", "")],
                                 cwd=REPO, capture_output=True, text=True, timeout=60)
    assert as_nobody.stdout.strip() == "a process this user cannot see", as_nobody.stderr
    assert as_root.stdout.startswith(f"pid {os.getpid()} ("), as_root.stderr


def test_a_service_that_exits_early_is_named_with_its_last_log_line(tmp_path):
    ports = {name: free_port() for name in SERVICES}
    up = start_up(tmp_path, ports, NIMRAG_RERANK_MODEL=str(tmp_path))  # not a model folder: rerank exits 2
    out, err = up.communicate(timeout=300)
    assert up.returncode == 6, err
    error = [line for line in err.splitlines() if "rerank exited" in line]
    assert error and "with code 2" in error[0] and "cannot read config.json" in error[0], err
    assert "Traceback" not in err and "platform ready" not in err
    assert "cannot read config.json" in (tmp_path / "data" / "logs" / "rerank.log").read_text()
    assert all(port_free(port) for port in ports.values())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_start_up_stops_every_service(tmp_path, sig):
    ports = {name: free_port() for name in SERVICES}
    up = start_up(tmp_path, ports)
    deadline = time.monotonic() + 180
    children: set[int] = set()
    while not any(listening(ports[name]) for name in ("embed", "rerank", "llm")):  # a service holds its port
        assert up.poll() is None, up.communicate()
        assert time.monotonic() < deadline, "no service bound its port"
        children |= set(children_of(up.pid))
        time.sleep(0.1)
    children |= set(children_of(up.pid))
    assert len(children) == 3  # embed, rerank, llm: the pipeline starts once they are ready
    up.send_signal(sig)
    out, err = up.communicate(timeout=120)
    assert up.returncode == 128 + sig, err
    assert "Traceback" not in err and f"{signal.Signals(sig).name}: stopping the services" in err
    assert not [pid for pid in children if alive(pid)]
    assert all(port_free(port) for port in ports.values())


def test_demo_answer_is_never_interleaved_with_log_lines_and_sigterm_stops_cleanly(tmp_path):
    ports = {name: free_port() for name in SERVICES}
    # --verbose: every request of the demo logs a line; stderr merged into stdout, as a terminal shows them
    up = subprocess.Popen([sys.executable, "-m", "nimrag.cli", "up", "--demo", "--verbose"], cwd=REPO, text=True,
                          env=up_env(tmp_path, ports, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
    lines: list[str] = []
    for line in up.stdout:
        lines.append(line.rstrip("\n"))
        if lines[-1].startswith("  [1] "):  # the first source: the answer is printed
            break
    children = children_of(up.pid)
    time.sleep(1)  # let lines held back during the demo come out
    up.send_signal(signal.SIGTERM)
    rest, _ = up.communicate(timeout=120)
    lines += rest.splitlines()
    assert up.returncode == 0, "\n".join(lines[-30:])  # a stop once serving is the normal end
    ready = dict(m.groups() for line in lines if (m := re.match(r"nimrag: (\w+) ready: .*port (\d+), ", line)))
    assert ready == {name: str(port) for name, port in ports.items()}, lines
    assert any(f"platform ready: pipeline at http://127.0.0.1:{ports['pipeline']}/v1" in line for line in lines)
    question = next(i for i, line in enumerate(lines) if line.startswith("Q: "))
    sources = next(i for i, line in enumerate(lines) if line.startswith("  [1] "))
    assert not [line for line in lines[question:sources + 1] if " | " in line]  # no service line in between
    assert [line for line in lines[sources:] if " | " in line]  # they came out after it
    assert not [pid for pid in children if alive(pid)] and all(port_free(port) for port in ports.values())
    for name in SERVICES:
        assert (tmp_path / "data" / "logs" / f"{name}.log").stat().st_size > 0


def test_a_sigkilled_up_leaves_no_service_running_and_no_port_held(tmp_path):
    ports = {name: free_port() for name in SERVICES}
    up = start_up(tmp_path, ports)
    for line in up.stderr:  # ends at EOF too: up exited, asserted below
        if "platform ready" in line:
            break
    assert up.poll() is None, up.communicate()
    children = children_of(up.pid)
    assert len(children) == 4
    up.kill()  # SIGKILL: nimrag up cannot stop anything itself
    up.communicate(timeout=30)
    deadline = time.monotonic() + 180
    while [pid for pid in children if alive(pid)]:
        assert time.monotonic() < deadline, [pid for pid in children if alive(pid)]
        time.sleep(0.2)
    assert all(port_free(port) for port in ports.values())
    for name in SERVICES:  # each said why it stopped, in the log file nimrag up no longer writes
        log = (tmp_path / "data" / "logs" / f"{name}.log").read_text()
        assert f"WARNING nimrag.parent: the `nimrag up` that started this service (pid {up.pid}) is gone" in log


# --- a service's watch on its parent ----------------------------------------------------------------------------

WATCHED = """
import signal, sys, time
from nimrag.services.common.logs import configure_logging
from nimrag.services.common.parent import watch_parent

configure_logging("INFO", json_logs=False)
if sys.argv[1] == "graceful":  # as uvicorn: SIGTERM starts the shutdown
    signal.signal(signal.SIGTERM, lambda *_: (print("graceful shutdown", flush=True), sys.exit(0)))
else:  # a shutdown that hangs
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
watch_parent(poll_s=0.05, grace_s=0.5)
print("watching", flush=True)
time.sleep(600)
"""

# as nimrag up: the child in its own session, its output through a pipe, the parent's pid and a log file passed on
PARENT = """
import os, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, start_new_session=True,
                         env={**os.environ, "NIMRAG_PARENT_PID": str(os.getpid()),
                              "NIMRAG_PARENT_LOG_FILE": sys.argv[3]})
child.stdout.readline()
print(child.pid, flush=True)
child.wait()
"""


@pytest.mark.parametrize("shutdown", ["graceful", "hangs"])
def test_a_watched_process_stops_when_its_parent_is_killed(tmp_path, shutdown):
    log = tmp_path / "service.log"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, WATCHED, shutdown, str(log)], cwd=REPO, text=True,
                              stdout=subprocess.PIPE)
    child = int(parent.stdout.readline())
    assert alive(child)
    parent.kill()
    parent.wait(timeout=30)
    deadline = time.monotonic() + 60
    while alive(child):
        assert time.monotonic() < deadline, "the child outlived its parent"
        time.sleep(0.05)
    lines = log.read_text().splitlines()
    assert f"WARNING nimrag.parent: the `nimrag up` that started this service (pid {parent.pid}) is gone" in lines[0]
    if shutdown == "graceful":
        assert lines[1:] == ["graceful shutdown"]
    else:
        assert len(lines) == 2 and "ERROR nimrag.parent: still running 0.5 s after SIGTERM: exiting now" in lines[1]


def test_a_service_started_by_hand_watches_no_parent(monkeypatch):
    monkeypatch.delenv(PARENT_PID_ENV, raising=False)
    assert watch_parent() is None
    monkeypatch.setenv(PARENT_PID_ENV, "not-a-pid")
    with pytest.raises(StartupError, match="NIMRAG_PARENT_PID must be a process id"):
        watch_parent()
    assert PARENT_PID_ENV not in os.environ  # never passed on to what the service starts


# --- what the console shows -------------------------------------------------------------------------------------

RECORDS = {
    '{"ts":"2025-01-31T12:00:00.000Z","level":"INFO","logger":"nimrag.access","msg":"GET /v1/health/ready"}': None,
    '{"ts":"2025-01-31T12:00:00.000Z","level":"WARNING","logger":"nimrag.embed","msg":"slow"}': "WARNING",
    "2025-01-31 12:00:00,123 INFO nimrag.access: GET /v1/health/ready 200": None,
    "2025-01-31 12:00:00,123 ERROR uvicorn.error: [Errno 98] address already in use": "ERROR",
    "/site-packages/torch/onnx/utils.py:12: UserWarning: Exporting aten::index": None,  # library chatter
    "Quantizing /tmp/model.onnx ...": None,
}


def test_the_console_shows_warnings_and_errors_only_unless_verbose():
    shown = io.StringIO()
    console = Console(shown)
    everything = io.StringIO()
    verbose = Console(everything, verbose=True)
    for line, level in RECORDS.items():
        assert (record_level(line) if level else None) == level
        console.service_line("embed", line)
        verbose.service_line("embed", line)
    assert shown.getvalue().splitlines() == [f"   embed | {line}" for line, level in RECORDS.items() if level]
    assert len(everything.getvalue().splitlines()) == len(RECORDS)


def test_held_lines_wait_until_the_answer_is_printed():
    shown = io.StringIO()
    console = Console(shown, verbose=True)
    with console.hold():
        console.service_line("llm", "a log line")
        shown.write("the answer\n")
    console.service_line("llm", "a later line")
    assert shown.getvalue().splitlines() == ["the answer", "     llm | a log line", "     llm | a later line"]
