"""``nimrag policy``: list, show, validate, apply, diff and roll back guardrails policies through the running
pipeline's ``/v1/guardrails/configs`` API. Only ``validate`` works without a pipeline (in-process). Errors are
CLIErrors: one readable line and the exit code of their kind (nimrag.errors), never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from pathlib import Path

import httpx

from nimrag.errors import CLIError, Exit, from_response, load_settings, no_pipeline

API = "/v1/guardrails/configs"
SKIPPED_NAMES = {"__pycache__"}


class PolicyClient:
    def __init__(self, url: str, headers: dict[str, str]):
        self.url = url
        self.http = httpx.Client(base_url=url, headers=headers, timeout=120)

    def call(self, method: str, path: str, **kwargs) -> dict:
        try:
            response = self.http.request(method, API + path, **kwargs)
        except httpx.TransportError as exc:
            raise no_pipeline(self.url, exc) from None
        if response.is_success:
            return response.json()
        raise from_response(response)

    def close(self) -> None:
        self.http.close()


# --- local files --------------------------------------------------------------------------------------------

def read_local_policy(path: Path) -> dict[str, str]:
    """A policy folder's files (or one file) by name. Files in subfolders keep their relative path, so that
    validation says they are not allowed; hidden files and __pycache__ are left out."""
    if not path.exists():
        raise CLIError(f"{path} does not exist")
    if path.is_file():
        return {path.name: _read_text(path)}
    files = {}
    for file in sorted(path.rglob("*")):
        relative = file.relative_to(path)
        if not file.is_file() or any(p.startswith(".") or p in SKIPPED_NAMES for p in relative.parts):
            continue
        files[relative.as_posix()] = _read_text(file)
    if not files:
        raise CLIError(f"{path} holds no files")
    return files


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CLIError(f"{path} is not UTF-8 text") from None


def _author() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


# --- commands -----------------------------------------------------------------------------------------------

def cmd_list(client: PolicyClient, args: argparse.Namespace) -> int:
    listing = client.call("GET", "")
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    rows = [("ID", "VERSION", "UPDATED", "DESCRIPTION")]
    rows += [(c["id"], str(c["version"]), c["updated"], c["description"]) for c in listing["configs"]]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for row in rows:
        print("  ".join([*(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)), row[3]]))
    return 0


def cmd_show(client: PolicyClient, args: argparse.Namespace) -> int:
    policy = client.call("GET", f"/{args.id}", params={"version": args.version} if args.version else None)
    if args.file:
        if args.file not in policy["files"]:
            raise CLIError(f"policy '{args.id}' version {policy['version']} has no file '{args.file}' "
                                     f"(it has {', '.join(sorted(policy['files']))})")
        sys.stdout.write(policy["files"][args.file])
        return 0
    if args.json:
        print(json.dumps(policy, indent=2))
        return 0
    print(f"# policy '{policy['id']}' version {policy['version']} of {policy['current_version']}, "
          f"{policy['created']} by {policy['author'] or '?'}: {policy['comment']}")
    for name, text in sorted(policy["files"].items()):
        print(f"\n==> {name} <==\n{text}", end="" if text.endswith("\n") else "\n")
    return 0


def cmd_history(client: PolicyClient, args: argparse.Namespace) -> int:
    history = client.call("GET", f"/{args.id}/history")
    for v in history["versions"]:
        marker = "*" if v["version"] == history["current_version"] else " "
        rollback = f" (rollback to {v['rollback_of']})" if v.get("rollback_of") else ""
        print(f"{marker} {v['version']:>4}  {v['created']}  {v['author'] or '?'}: {v['comment']}{rollback}")
    return 0


def cmd_validate(client: PolicyClient, args: argparse.Namespace) -> int:
    from nimrag.rag_cli import pipeline_running

    files = read_local_policy(Path(args.path))
    if pipeline_running(client.url):
        print(f"validating with the pipeline at {client.url}", file=sys.stderr)
        result = client.call("POST", "/validate", json={"files": files})
    else:
        print(f"no pipeline at {client.url}: validating in-process", file=sys.stderr)
        result = asyncio.run(_validate_locally(files))
    if result["valid"]:
        print(f"{args.path}: valid ({len(files)} file(s))")
        return 0
    print(f"{args.path}: invalid", file=sys.stderr)
    for problem in result["problems"]:
        print(f"- {problem}", file=sys.stderr)
    return Exit.INCOMPLETE


async def _validate_locally(files: dict[str, str]) -> dict:
    from nimrag.guardrails.validation import validate_policy
    from nimrag.pipeline.settings import PipelineSettings

    settings = load_settings(PipelineSettings)
    endpoints = await _local_endpoints(settings)
    problems = await asyncio.to_thread(validate_policy, files, endpoints, settings.guardrails_allow_python,
                                       settings.guardrails_max_policy_bytes)
    return {"valid": not problems, "problems": problems}


async def _local_endpoints(settings):
    """The services' models as the pipeline would bind them; a service that does not answer gets a placeholder
    name, so that only a policy naming models is affected (and its message shows why)."""
    from nimrag.guardrails.runtime import Endpoints

    async def served_model(client: httpx.AsyncClient, name: str, url: str) -> str:
        try:
            response = await client.get(url.rstrip("/") + "/models")
            response.raise_for_status()
            return response.json()["data"][0]["id"]
        except (httpx.HTTPError, ValueError, KeyError, IndexError):
            print(f"the {name} service at {url} does not answer: its model name is unknown", file=sys.stderr)
            return f"(unknown: the {name} service does not answer)"

    headers = {"Authorization": f"Bearer {settings.service_api_key}"} if settings.service_api_key else {}
    async with httpx.AsyncClient(timeout=3, headers=headers) as client:
        llm, embed = await asyncio.gather(served_model(client, "llm", settings.llm_url),
                                          served_model(client, "embed", settings.embed_url))
    return Endpoints(settings.llm_url, llm, settings.embed_url, embed, settings.service_api_key)


def cmd_apply(client: PolicyClient, args: argparse.Namespace) -> int:
    files = read_local_policy(Path(args.path))
    body = {"files": files, "comment": args.comment, "author": _author()}
    try:
        current = client.call("GET", f"/{args.id}")["version"]
    except CLIError as exc:
        if exc.status != 404:
            raise
        created = client.call("POST", "", json={"id": args.id, **body})
        print(f"policy '{args.id}': created, version {created['version']}")
        return 0
    updated = client.call("PUT", f"/{args.id}", json={**body, "expected_version": current})
    state = "unchanged (same files)" if updated["version"] == current else "updated"
    print(f"policy '{args.id}': {state}, version {updated['version']}")
    return 0


def cmd_diff(client: PolicyClient, args: argparse.Namespace) -> int:
    params = {k: v for k, v in {"from_version": args.from_version, "to_version": args.to_version}.items() if v}
    diff = client.call("GET", f"/{args.id}/diff", params=params)
    if not diff["files"]:
        print(f"versions {diff['from_version']} and {diff['to_version']} of '{args.id}' have the same files",
              file=sys.stderr)
    for text in diff["files"].values():
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def cmd_rollback(client: PolicyClient, args: argparse.Namespace) -> int:
    result = client.call("POST", f"/{args.id}/rollback",
                         json={"version": args.version, "comment": args.comment, "author": _author()})
    print(f"policy '{args.id}': version {result['version']} now holds the files of version {args.version}")
    return 0


COMMANDS = {"list": cmd_list, "show": cmd_show, "history": cmd_history, "validate": cmd_validate,
            "apply": cmd_apply, "diff": cmd_diff, "rollback": cmd_rollback}


def run(args: argparse.Namespace, url: str, headers: dict[str, str]) -> int:
    client = PolicyClient(url, headers)
    try:
        return COMMANDS[args.policy_command](client, args)
    finally:
        client.close()
