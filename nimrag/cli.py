"""The ``nimrag`` command: run the platform or one service, ingest documents, ask questions, list profiles."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from nimrag.errors import EXIT_CODES_HELP, CLIError, Exit, load_settings


def _load(target: str):
    """Import ``module:attribute`` on demand, so the CLI starts fast and loads only the service it runs."""
    module_name, attribute = target.split(":")
    return getattr(importlib.import_module(module_name), attribute)


@dataclass(frozen=True)
class ServiceEntry:
    settings: str  # "module:Class" of the service's settings
    profiles: str | None  # "module:LIST" of its optimization profiles (None: it serves no model)
    app_factory: str  # "module:function" building its app from settings


SERVICES: dict[str, ServiceEntry] = {
    "embed": ServiceEntry("nimrag.services.embed.settings:EmbedSettings",
                          "nimrag.services.embed.profiles:EMBED_PROFILES", "nimrag.services.embed.app:create_app"),
    "llm": ServiceEntry("nimrag.services.llm.settings:LLMSettings", "nimrag.services.llm.profiles:LLM_PROFILES",
                        "nimrag.services.llm.app:create_app"),
    "pipeline": ServiceEntry("nimrag.pipeline.settings:PipelineSettings", None, "nimrag.pipeline.app:create_app"),
    "rerank": ServiceEntry("nimrag.services.rerank.settings:RerankSettings",
                           "nimrag.services.rerank.profiles:RERANK_PROFILES", "nimrag.services.rerank.app:create_app"),
}


def _offline_env() -> None:
    # Models come from local folders and packages only: never let a library reach for a model hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from nimrag.services.common.errors import StartupError
    from nimrag.services.common.logs import configure_logging
    from nimrag.services.common.parent import watch_parent

    _offline_env()
    entry = SERVICES[args.service]
    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "profile": args.profile,
                                   "model": args.model}.items() if v is not None}
    if entry.profiles is None and ({"profile", "model"} & set(overrides)):
        raise CLIError(f"{args.service} serves no model: --profile and --model do not apply")
    settings = load_settings(_load(entry.settings), **overrides)
    configure_logging(settings.log_level, settings.json_logs)
    try:
        watch_parent()  # started by `nimrag up`: stop once it is gone, even SIGKILLed
        app = _load(entry.app_factory)(settings)
    except StartupError as exc:
        raise CLIError(str(exc)) from None
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, timeout_graceful_shutdown=10)
    return 0


def cmd_profiles_list(args: argparse.Namespace) -> int:
    from nimrag.services.common.hardware import probe
    from nimrag.services.common.profiles import ProfileError, evaluate, select_profile

    hw = probe()
    names = [args.service] if args.service else [n for n, e in SERVICES.items() if e.profiles]
    report = {}
    for name in names:
        entry = SERVICES[name]
        profiles = _load(entry.profiles)
        compatible, incompatible = evaluate(profiles, hw)
        pinned = load_settings(_load(entry.settings)).profile
        try:
            selected = select_profile(profiles, hw, pinned).profile.id
        except ProfileError as exc:
            selected = f"error: {exc}"
        report[name] = {"selected": selected, "compatible": [p.as_dict() for p in compatible],
                        "incompatible": [{**p.as_dict(), "reasons": r} for p, r in incompatible]}
    if args.json:
        print(json.dumps({"hardware": hw.as_dict(), "services": report}, indent=2))
        return 0
    gpus = ", ".join(f"{g.name} {g.memory_gib} GiB cc{g.compute_capability[0]}.{g.compute_capability[1]}"
                     for g in hw.gpus) or "none"
    print(f"CPU: {hw.cpu_model} ({hw.physical_cores} cores, {hw.logical_cores} threads); GPUs: {gpus}")
    for name, r in report.items():
        width = max(len(p["id"]) for p in r["compatible"] + r["incompatible"])
        print(f"\n[{name}] selected: {r['selected']}")
        print("  compatible:")
        for p in r["compatible"]:
            print(f"    {p['id']:<{width}} {p['backend']:<12} {p['device']:<5} {p['precision']:<5} "
                  f"batch {p['max_batch_items']:<4} {p['description']}")
        print("  incompatible:")
        for p in r["incompatible"]:
            print(f"    {p['id']:<{width}} {'; '.join(p['reasons'])}")
    return 0


def cmd_triton_serve(args: argparse.Namespace) -> int:
    from nimrag.services.common.errors import StartupError
    from nimrag.services.common.logs import configure_logging

    _offline_env()
    configure_logging("INFO", json_logs=False)
    if importlib.util.find_spec("pytriton") is None:  # the optional extra `triton`
        raise CLIError("nimrag triton serve needs nvidia-pytriton: pip install 'nimrag[triton]'")
    from nimrag.triton.server import serve

    try:
        return serve(args)
    except (StartupError, ValueError) as exc:
        raise CLIError(str(exc)) from None


def cmd_up(args: argparse.Namespace) -> int:
    from nimrag.console import Console
    from nimrag.platform import Interrupted, Platform, PlatformError

    _offline_env()
    console = Console(sys.stderr, verbose=args.verbose)
    platform = Platform(json_logs=args.json_logs, console=console)
    ready = False
    with platform.signals_handled():  # before the first child starts: whatever ends this, they all stop
        try:
            console.note(f"starting embed, rerank, llm, pipeline; full logs in {platform.log_dir}")
            platform.start(timeout_s=args.ready_timeout)
            ready = True
            console.note(f"platform ready: pipeline at http://127.0.0.1:{platform.ports['pipeline']}/v1 "
                         "(Ctrl-C stops it)")
            if args.demo:
                with console.hold():  # the answer is never interleaved with log lines
                    _demo(platform)
            platform.wait()
        except Interrupted as exc:
            console.note(f"{exc}: stopping the services")
            return Exit.OK if ready else Exit.INTERRUPTED + exc.signum  # a stop once serving is the normal end
        except PlatformError as exc:
            raise CLIError(str(exc), Exit.PLATFORM) from None
        finally:
            platform.stop()


def cmd_config_reference(args: argparse.Namespace) -> int:
    from nimrag.config_reference import main

    return main(args.output)


def _demo(platform) -> None:
    """Ingest the bundled sample documents and answer one question about them."""
    from nimrag import rag_cli

    url = f"http://127.0.0.1:{platform.ports['pipeline']}"
    samples = str(Path(__file__).parent / "samples")
    rag_cli.ingest([samples], "samples", url, {}, None, None)
    question = "How long is the warranty on the Aurora X2 kettle, and what does it not cover?"
    print(f"\nQ: {question}\nA: ", end="")
    rag_cli.ask(question, "samples", url, {}, as_json=False)
    sys.stdout.flush()


def _pipeline_client(args: argparse.Namespace) -> tuple[str, dict]:
    from nimrag.pipeline.settings import PipelineSettings

    settings = load_settings(PipelineSettings)
    url = args.url or f"http://127.0.0.1:{settings.port}"
    keys = settings.api_key_list
    return url.rstrip("/"), ({"Authorization": f"Bearer {keys[0]}"} if keys else {})


def cmd_ingest(args: argparse.Namespace) -> int:
    from nimrag import rag_cli

    url, headers = _pipeline_client(args)
    return rag_cli.ingest(args.paths, args.collection, url, headers, args.chunk_size, args.chunk_overlap)


def cmd_ask(args: argparse.Namespace) -> int:
    from nimrag import rag_cli

    url, headers = _pipeline_client(args)
    return rag_cli.ask(args.question, args.collection, url, headers, args.json)


def cmd_policy(args: argparse.Namespace) -> int:
    from nimrag import policy_cli

    url, headers = _pipeline_client(args)
    if args.admin_key:  # the admin key also opens what a normal key opens
        headers = {"Authorization": f"Bearer {args.admin_key}"}
    return policy_cli.run(args, url, headers)


def _add_policy_parser(sub) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="pipeline URL (default: http://127.0.0.1:8081)")
    common.add_argument("--admin-key", default=os.environ.get("NIMRAG_ADMIN_API_KEY"),
                        help="the pipeline's admin API key, needed to change policies (default: $NIMRAG_ADMIN_API_KEY)")
    policy = sub.add_parser("policy", help="guardrails policies: list, show, validate, apply, diff, rollback")
    commands = policy.add_subparsers(dest="policy_command", required=True)

    listing = commands.add_parser("list", parents=[common], help="the policies, with their current versions")
    listing.add_argument("--json", action="store_true")
    show = commands.add_parser("show", parents=[common], help="a policy's files (current version by default)")
    show.add_argument("id")
    show.add_argument("--version", type=int)
    show.add_argument("--file", help="print only this file, as it is")
    show.add_argument("--json", action="store_true")
    history = commands.add_parser("history", parents=[common], help="a policy's versions, newest first")
    history.add_argument("id")
    validate = commands.add_parser("validate", parents=[common], help="check a policy folder (or one file) "
                                   "without storing it; in-process when no pipeline answers")
    validate.add_argument("path", metavar="FILE_OR_DIR")
    apply = commands.add_parser("apply", parents=[common], help="store a policy folder as a new version "
                                "(creating the policy if needed); applies without a restart")
    apply.add_argument("path", metavar="DIR")
    apply.add_argument("--id", required=True)
    apply.add_argument("--comment", default="")
    diff = commands.add_parser("diff", parents=[common], help="unified diff between two versions (default: the "
                               "current one and the one before)")
    diff.add_argument("id")
    diff.add_argument("--from", dest="from_version", type=int)
    diff.add_argument("--to", dest="to_version", type=int)
    rollback = commands.add_parser("rollback", parents=[common], help="make a new version with an old version's "
                                   "files")
    rollback.add_argument("id")
    rollback.add_argument("version", type=int)
    rollback.add_argument("--comment", default="")
    policy.set_defaults(func=cmd_policy)


class _VersionAction(argparse.Action):
    """``--version``: the installed package's version, read only when asked (the import is not free)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="print the installed nimrag version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from nimrag.services.common.app import package_version

        print(f"nimrag {package_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nimrag", description=__doc__, epilog=EXIT_CODES_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run one microservice")
    serve.add_argument("service", choices=sorted(SERVICES))
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--profile", help="pin an optimization profile (as NIM_MODEL_PROFILE)")
    serve.add_argument("--model", help="model folder to serve instead of the bundled default")
    serve.set_defaults(func=cmd_serve)

    up = sub.add_parser("up", help="start the whole platform on this host (embed, rerank, LLM, pipeline)",
                        epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    up.add_argument("--demo", action="store_true", help="ingest the sample documents and ask a question")
    up.add_argument("--verbose", action="store_true", help="show every log line of every service (default: "
                    "when each is ready, then warnings and errors; the full logs are in <data>/logs/)")
    up.add_argument("--json-logs", action="store_true", help="JSON log lines instead of readable text")
    up.add_argument("--ready-timeout", type=float, default=300, metavar="SECONDS",
                    help="how long each service may take to get ready (default 300)")
    up.set_defaults(func=cmd_up)

    ingest = sub.add_parser("ingest", help="index files, folders or globs into a collection")
    ingest.add_argument("paths", nargs="+")
    ingest.add_argument("--collection", help="collection name (default: the pipeline's default)")
    ingest.add_argument("--chunk-size", type=int)
    ingest.add_argument("--chunk-overlap", type=int)
    ingest.add_argument("--url", help="pipeline URL (default: http://127.0.0.1:8081)")
    ingest.set_defaults(func=cmd_ingest)

    ask = sub.add_parser("ask", help="answer a question from a collection, with sources")
    ask.add_argument("question")
    ask.add_argument("--collection")
    ask.add_argument("--url", help="pipeline URL (default: http://127.0.0.1:8081)")
    ask.add_argument("--json", action="store_true", help="print the answer, citations and timings as JSON")
    ask.set_defaults(func=cmd_ask)

    _add_policy_parser(sub)

    triton = sub.add_parser("triton", help="a Triton Inference Server hosting nimrag's CPU engines")
    triton_serve = triton.add_subparsers(dest="triton_command", required=True).add_parser(
        "serve", help="serve the embedding, reranking and LLM models in Triton (PyTriton), for the services' "
                      "Triton profiles")
    _load("nimrag.triton.arguments:add_arguments")(triton_serve)
    triton_serve.set_defaults(func=cmd_triton_serve)

    profiles = sub.add_parser("profiles", help="optimization profiles")
    profiles_sub = profiles.add_subparsers(dest="profiles_command", required=True)
    listing = profiles_sub.add_parser("list", help="compatible and incompatible profiles on this machine")
    listing.add_argument("--service", choices=sorted(n for n, e in SERVICES.items() if e.profiles))
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_profiles_list)

    reference = sub.add_parser("config-reference", help="every environment variable of every service, as Markdown "
                               "(docs/configuration.md)")
    reference.add_argument("--output", metavar="FILE", help="write it to FILE instead of printing it")
    reference.set_defaults(func=cmd_config_reference)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CLIError as exc:
        print(f"nimrag: {exc}", file=sys.stderr)
        return int(exc.code)
    except KeyboardInterrupt as exc:  # Ctrl-C, or a signal nimrag.platform turned into one
        print("\nnimrag: interrupted", file=sys.stderr)
        return Exit.INTERRUPTED + getattr(exc, "signum", signal.SIGINT)  # 130 for SIGINT, as shells report it
    except BrokenPipeError:  # the reader went away (`nimrag ... | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 1


if __name__ == "__main__":
    sys.exit(main())
