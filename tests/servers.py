"""Real servers the tests share: a Milvus Lite server on a loopback port (a Milvus Lite file serves one process
only, so pipeline replicas share a server), and the way to stop a child process."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

MILVUS_STARTUP_S = 120


def start_milvus_lite_server(data_dir: Path, port: int) -> subprocess.Popen:
    """``milvus-lite server`` on 127.0.0.1:``port``, once it accepts connections; its log beside ``data_dir``."""
    log = data_dir.parent / f"milvus-{port}.log"
    process = subprocess.Popen([sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data_dir),
                                "--host", "127.0.0.1", "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    deadline = time.monotonic() + MILVUS_STARTUP_S
    while True:
        assert process.poll() is None, log.read_text()[-2000:]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.2)


def stop_process(process: subprocess.Popen, grace_s: float = 30) -> None:
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
