"""What a failed ``nimrag`` command tells the person: one or two lines saying what failed and what to do, and an
exit code per kind of failure (listed in ``nimrag --help`` and the README)."""

from __future__ import annotations

from enum import IntEnum

import httpx


class Exit(IntEnum):
    OK = 0
    INCOMPLETE = 1  # the command ran, but part of its work failed: files not ingested, a policy with problems
    USAGE = 2  # bad arguments, input files or configuration (argparse uses 2 too)
    UNAVAILABLE = 3  # a service is not running, cannot be reached or went away mid-request
    REFUSED = 4  # the server refused the request (HTTP 4xx: key, validation, not found, conflict)
    SERVER_ERROR = 5  # the server failed (HTTP 5xx other than unavailable)
    PLATFORM = 6  # `nimrag up` could not start or keep its services: a port in use, a service exited or hung
    INTERRUPTED = 128  # plus the signal's number: 130 for Ctrl-C, 143 for SIGTERM


EXIT_CODES_HELP = """exit codes:
  0    success
  1    part of the work failed (the summary lists the files not ingested; a policy has problems)
  2    bad arguments, input files or configuration
  3    a service is not running, cannot be reached or went away (start the platform with `nimrag up`)
  4    the server refused the request (API key, validation, not found)
  5    the server failed
  6    `nimrag up`: a port is in use, a service exited or was not ready in time
  130  interrupted (Ctrl-C); 143: stopped by SIGTERM during start-up"""

SERVICE_LABELS = {"embed": "embedding", "rerank": "reranking", "llm": "LLM", "pipeline": "pipeline"}
UNAVAILABLE_STATUSES = (502, 503, 504)


class CLIError(Exception):
    """A failure as the person should read it (printed after 'nimrag: '), with its exit code; ``status`` is the
    HTTP status when a server answered."""

    def __init__(self, message: str, code: Exit = Exit.USAGE, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.status = status


def load_settings(settings_class: type, **overrides):
    """A service's settings from the environment and ``overrides`` (command-line options); a value that does not
    validate is one line per field naming its variable, not pydantic's traceback."""
    from pydantic import ValidationError

    try:
        return settings_class(**overrides)
    except ValidationError as exc:
        prefix = settings_class.model_config.get("env_prefix", "")

        def source(field: str) -> str:  # where the person set it
            return f"--{field.replace('_', '-')}" if field in overrides else f"{prefix}{field.upper()}"

        problems = [f"{source('_'.join(map(str, e['loc'])))}={e.get('input')!r}: {e['msg']}" for e in exc.errors()]
        raise CLIError("invalid setting " + "; ".join(problems)) from None


def code_for_status(status: int) -> Exit:
    if status in UNAVAILABLE_STATUSES:
        return Exit.UNAVAILABLE
    return Exit.REFUSED if status < 500 else Exit.SERVER_ERROR


def response_message(response: httpx.Response) -> str:
    """The message of the error shape every service answers with, else the start of the body."""
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return response.text[:300].strip() or response.reason_phrase


def from_response(response: httpx.Response) -> CLIError:
    status = response.status_code
    return CLIError(f"{response_message(response)} (HTTP {status})", code_for_status(status), status)


def no_pipeline(url: str, exc: Exception | None = None) -> CLIError:
    detail = f" ({exc})" if exc and str(exc) else ""
    return CLIError(f"no pipeline answers at {url}{detail}: start the platform with `nimrag up` (or `nimrag serve "
                    "pipeline`), or pass --url", Exit.UNAVAILABLE)


def lost_pipeline(url: str, exc: Exception) -> CLIError:
    return CLIError(f"lost the connection to the pipeline at {url} ({type(exc).__name__}: {exc or 'closed'}); "
                    "is it still running?", Exit.UNAVAILABLE)


def _service_answers(root: str) -> bool:
    try:
        return httpx.get(root + "/v1/health/live", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def from_dependency(service: str, url: str, message: str) -> CLIError:
    """A microservice the in-process pipeline called failed: say whether it is missing or answered badly."""
    root = url.rstrip("/").removesuffix("/v1")
    label = SERVICE_LABELS.get(service, service)
    if not _service_answers(root):
        return CLIError(f"no {label} service at {root} — start the platform with `nimrag up` (or point "
                        f"NIMRAG_PIPELINE_{service.upper()}_URL at one)", Exit.UNAVAILABLE)
    return CLIError(f"the {label} service at {root} failed: {message}", Exit.UNAVAILABLE)


def from_error(code: str, message: str, status: int, settings=None) -> CLIError:
    """An error of the services' shape (raised in-process, or an event of an answer stream) as the person should
    read it; with the pipeline's ``settings``, a microservice it could not use is named with its URL."""
    service = code.removesuffix("_unavailable")
    url = getattr(settings, f"{service}_url", None) if code.endswith("_unavailable") else None
    if url:
        return from_dependency(service, url, message)
    return CLIError(message, code_for_status(status), status)


def from_api_error(exc, settings) -> CLIError:
    """An ``APIError`` raised by pipeline code running in-process, as if the pipeline had answered it."""
    return from_error(exc.code, exc.message, exc.status_code, settings)
