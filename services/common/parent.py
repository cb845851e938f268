"""A service started by ``nimrag up`` stops when ``nimrag up`` is gone, even when it was SIGKILLed.

``nimrag up`` starts each service in a session of its own (so that a Ctrl-C reaches ``nimrag up`` alone, which then
stops them in order) and passes its pid in ``NIMRAG_PARENT_PID``. A SIGKILL leaves it no chance to stop them, so each
service watches for itself: once its parent pid is no longer that one (it was re-parented to init or a subreaper),
it logs one warning and SIGTERMs itself, so that the usual graceful shutdown runs; still alive ``grace_s`` later, it
exits hard. Its output went to ``nimrag up`` through a pipe nobody reads now, so it first points stdout and stderr at
the log file ``nimrag up`` was writing for it (``NIMRAG_PARENT_LOG_FILE``): the shutdown's lines still end up there.
Without ``NIMRAG_PARENT_PID`` (``nimrag serve`` run by hand) nothing is watched. Polling ``os.getppid()`` works on
every POSIX system, unlike Linux's ``PR_SET_PDEATHSIG``, and cannot be fooled by a reused pid.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

PARENT_PID_ENV = "NIMRAG_PARENT_PID"
PARENT_LOG_ENV = "NIMRAG_PARENT_LOG_FILE"
POLL_S = 1.0
EXIT_GRACE_S = 30.0  # after the SIGTERM: above uvicorn's graceful shutdown (10 s) plus the model's stop

logger = logging.getLogger("nimrag.parent")


def watch_parent(poll_s: float = POLL_S, grace_s: float = EXIT_GRACE_S) -> threading.Thread | None:
    """Start the watcher when ``NIMRAG_PARENT_PID`` names the parent (None otherwise). The variables are taken out
    of the environment, so that a process this one starts does not watch a parent that is not its own."""
    value = os.environ.pop(PARENT_PID_ENV, None)
    log_file = os.environ.pop(PARENT_LOG_ENV, None)
    if not value:
        return None
    try:
        parent = int(value)
    except ValueError:
        from nimrag.services.common.errors import StartupError  # not at the top: `nimrag up` imports this module too

        raise StartupError(f"{PARENT_PID_ENV} must be a process id, not {value!r}") from None
    thread = threading.Thread(target=_watch, args=(parent, log_file, poll_s, grace_s), name="parent-watch",
                              daemon=True)  # never what keeps the process alive
    thread.start()
    return thread


def _watch(parent: int, log_file: str | None, poll_s: float, grace_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(poll_s)
    if log_file:
        _redirect_output(log_file)
    logger.warning("the `nimrag up` that started this service (pid %d) is gone: shutting down", parent)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_s)
    logger.error("still running %g s after SIGTERM: exiting now", grace_s)
    os._exit(1)


def _redirect_output(path: str) -> None:
    """stdout and stderr (file descriptors 1 and 2, so every writer follows) appended to ``path``."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        logger.warning("cannot append to the log file %s (%s)", path, exc)  # lost with the pipe, as before
        return
    for target in (1, 2):
        os.dup2(fd, target)
    os.close(fd)
