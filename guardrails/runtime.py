"""Policies run by NeMo Guardrails on nimrag's own services.

A policy is a NeMo Guardrails config folder (``config.yml``, ``prompts.yml``, Colang 1.0 ``*.co``). The platform
binds its models (the LLM and embedding services) and adds nimrag's rails (``library/nimrag.co``); a policy never
names a host. NeMo runs the input rails (``check_async``) and the output rails on the pipeline's own token stream
(``stream_async(generator=...)``); nimrag adds the retrieval rail (chunks carrying injected instructions are
dropped) and masking of sensitive data in the streamed answer.

Each rail type is a span, a child of the span current where it runs (the request's): ``guardrails.input``,
``guardrails.retrieval``, and ``guardrails.output``, which lasts as long as the answer's stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from nemoguardrails import LLMRails, RailsConfig
from nemoguardrails.rails.llm.config import Model
from nemoguardrails.rails.llm.options import RailStatus, RailType
from opentelemetry import trace
from pydantic import ValidationError

from nimrag.guardrails.actions import RAIL_MS, PolicySettings, RailActions
from nimrag.guardrails.detectors import Embed, StreamMasker
from nimrag.guardrails.policy_yaml import load_yaml
from nimrag.services.common.tracing import traced_stream

if TYPE_CHECKING:
    from nimrag.guardrails.store import PolicyStore

PACKAGE = Path(__file__).resolve().parent
DEFAULT_POLICY_DIR = PACKAGE / "policies" / "default"
LIBRARY_FILE = PACKAGE / "library" / "nimrag.co"
LIBRARY_NAME = "_nimrag_library.co"
FILE_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}"  # flat; no leading dot (hidden files, '..')
POLICY_FILE = re.compile(rf"{FILE_NAME}\.(yml|yaml|co)")
POLICY_FILE_WITH_PYTHON = re.compile(rf"{FILE_NAME}\.(yml|yaml|co|py)")
OUTPUT_REFUSAL = "I'm sorry, I can't share that answer."
MODEL_ENGINES = {"nimrag", "openai", "nim"}
HOST_PARAMETERS = {"base_url", "api_base", "endpoint", "url", "openai_api_base", "api_key"}

log = logging.getLogger("nimrag.guardrails")
tracer = trace.get_tracer("nimrag.guardrails")


class PolicyError(ValueError):
    """A policy that cannot run; ``problems`` says what is wrong and where, one sentence each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class Endpoints:
    """The platform's services, bound into every policy."""

    llm_url: str
    llm_model: str
    embed_url: str
    embed_model: str
    api_key: str = ""


def read_policy_dir(path: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(Path(path).iterdir()) if p.is_file()}


# --- parsing -----------------------------------------------------------------------------------------------------

@dataclass
class LoadedPolicy:
    config: RailsConfig
    settings: PolicySettings
    rails: LLMRails
    actions: RailActions


def load_policy(files: Mapping[str, str], endpoints: Endpoints, *, allow_python: bool = False,
                embed: Embed | None = None, protected_texts: list[str] | None = None) -> LoadedPolicy:
    """A policy's files parsed by NeMo Guardrails, bound to the platform's models, and built into its runtime
    with nimrag's actions registered. Contacts no service (``embed`` runs only when a rail does). Python files,
    when the operator allows them, are imported by NeMo while the rails are built. Raises PolicyError."""
    allowed = POLICY_FILE_WITH_PYTHON if allow_python else POLICY_FILE
    problems = [f"{name}: not a policy file (a flat .yml/.yaml config or a .co Colang file)"
                for name in sorted(files) if not allowed.fullmatch(name) or name == LIBRARY_NAME]
    if "config.yml" not in files:
        problems.append("config.yml is missing")
    try:
        config_yml = load_yaml(files.get("config.yml", "")) or {}
    except yaml.YAMLError as exc:
        problems.append(f"config.yml: invalid YAML: {' '.join(str(exc).split())}")
    if problems:
        raise PolicyError(problems)
    if not isinstance(config_yml, dict):
        raise PolicyError(["config.yml: must be a mapping of settings"])
    with tempfile.TemporaryDirectory(prefix="nimrag-policy-") as folder:
        for name, text in files.items():
            (Path(folder) / name).write_text(text, encoding="utf-8")
        (Path(folder) / LIBRARY_NAME).write_text(LIBRARY_FILE.read_text(encoding="utf-8"), encoding="utf-8")
        config = parse_folder(folder)
        # NeMo would keep unknown top-level keys as custom data, but drops them when no file declares custom_data.
        config.custom_data["nimrag"] = config_yml.get("nimrag") or {}
        problems = model_problems(config.models, endpoints) + streaming_problems(config)
        try:
            settings = policy_settings(config)
        except PolicyError as exc:
            problems += exc.problems
        if problems:
            raise PolicyError(problems)
        config.models = bound_models(endpoints)
        rails = new_rails(config)
    actions = RailActions(settings, embed, protected_texts or [])
    actions.register(rails)
    return LoadedPolicy(config, settings, rails, actions)


def parse_folder(folder: str) -> RailsConfig:
    try:
        return RailsConfig.from_path(folder)
    except ValidationError as exc:
        raise PolicyError([f"config: {' '.join(str(e['msg']).split())}" for e in exc.errors()]) from None
    except Exception as exc:  # noqa: BLE001 - NeMo raises plain exceptions for Colang syntax errors
        raise PolicyError([" ".join(str(exc).replace(folder + "/", "").split())]) from None


def model_problems(models: list[Model], endpoints: Endpoints) -> list[str]:
    """A policy may name the platform's models, nothing else: the platform decides where requests go."""
    served = {"main": endpoints.llm_model, "embeddings": endpoints.embed_model}
    problems = []
    for model in models:
        if model.type not in served:
            problems.append(f"config.yml: models: no '{model.type}' model on this platform (only main: "
                            f"{served['main']}, embeddings: {served['embeddings']})")
        elif model.model not in (None, served[model.type]):
            problems.append(f"config.yml: models: the {model.type} model '{model.model}' is not served here; "
                            f"this platform serves '{served[model.type]}'")
        if model.engine not in MODEL_ENGINES:
            problems.append(f"config.yml: models: engine '{model.engine}' is not one of {sorted(MODEL_ENGINES)}")
        if set(model.parameters) & HOST_PARAMETERS:
            problems.append(f"config.yml: models: {sorted(set(model.parameters) & HOST_PARAMETERS)} are set by "
                            "the platform, not by a policy")
    return problems


def streaming_problems(config: RailsConfig) -> list[str]:
    output = config.rails.output
    if output.flows and not (output.streaming and output.streaming.enabled):
        return ["config.yml: rails.output.streaming.enabled must be true: the pipeline streams its answers "
                "through the output rails"]
    return []


def policy_settings(config: RailsConfig) -> PolicySettings:
    try:
        return PolicySettings.model_validate(config.custom_data.get("nimrag") or {})
    except ValidationError as exc:
        raise PolicyError([f"config.yml: nimrag.{'.'.join(map(str, e['loc']))}: "
                           f"{e['msg'].removeprefix('Value error, ')}" for e in exc.errors()]) from None


def bound_models(endpoints: Endpoints) -> list[Model]:
    key = endpoints.api_key or "unused"
    return [Model(type="main", engine="openai", model=endpoints.llm_model,
                  parameters={"base_url": endpoints.llm_url, "api_key": key, "temperature": 0.0}),
            Model(type="embeddings", engine="openai", model=endpoints.embed_model,
                  parameters={"base_url": endpoints.embed_url, "api_key": key})]


def new_rails(config: RailsConfig) -> LLMRails:
    try:
        return LLMRails(config)
    except Exception as exc:  # noqa: BLE001 - NeMo's InvalidRailsConfigurationError and friends
        raise PolicyError([" ".join(str(exc).split())]) from None


# --- running -----------------------------------------------------------------------------------------------------

@dataclass
class Verdict:
    """What a policy decided on one answer: the rail that blocked (if any) and every rail that acted."""

    policy: str
    version: int
    blocked_by: str | None = None
    refusal: str | None = None
    activated: list[str] = field(default_factory=list)
    masked: dict[str, int] = field(default_factory=dict)
    dropped_chunks: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)  # per rail type (input, retrieval), wall time
    rail_ms: dict[str, float] = field(default_factory=dict)  # per nimrag rail, time in its checks

    def as_dict(self) -> dict:
        return {"config_id": self.policy, "version": self.version, "blocked_by": self.blocked_by,
                "activated_rails": self.activated, "masked": self.masked, "dropped_chunks": self.dropped_chunks,
                "timings_ms": self.timings_ms, "rail_ms": self.rail_ms}


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


class PolicyRuntime:
    """One version of one policy, ready to run."""

    def __init__(self, policy_id: str, version: int, loaded: LoadedPolicy):
        self.policy_id, self.version = policy_id, version
        self.config, self.settings = loaded.config, loaded.settings
        self.rails, self.actions = loaded.rails, loaded.actions

    def verdict(self) -> Verdict:
        """A new answer's verdict; the rails that run for this answer (in this task and those it starts) add
        their time to it."""
        verdict = Verdict(self.policy_id, self.version)
        RAIL_MS.set(verdict.rail_ms)
        return verdict

    async def check_input(self, question: str, verdict: Verdict) -> None:
        """The input rails on the user's question; a block fills ``verdict.blocked_by`` and its refusal."""
        if not self.config.rails.input.flows:
            return
        started = time.perf_counter()
        with tracer.start_as_current_span("guardrails.input", attributes=self._span_attributes()) as span:
            result = await self.rails.check_async([{"role": "user", "content": question}],
                                                  rail_types=[RailType.INPUT])
            if result.status == RailStatus.BLOCKED:
                span.set_attribute("nimrag.guardrails.blocked_by", result.rail or "")
        verdict.timings_ms["input_rails_ms"] = _ms(started)
        verdict.activated += list(self.config.rails.input.flows)
        if result.status == RailStatus.BLOCKED:
            verdict.blocked_by, verdict.refusal = result.rail, result.content

    async def drop_injected(self, texts: list[str], vectors, verdict: Verdict) -> list[int]:
        """Indexes of the retrieved texts to keep: those carrying injected instructions are dropped. ``vectors``
        are the texts' stored embeddings."""
        if not self.settings.retrieval.drop_injected_chunks:
            return list(range(len(texts)))
        started = time.perf_counter()
        with tracer.start_as_current_span("guardrails.retrieval", attributes=self._span_attributes()) as span:
            outcomes = await asyncio.gather(*(self.actions.jailbreak_outcome(t, v)
                                              for t, v in zip(texts, vectors, strict=True)))
            keep = [i for i, outcome in enumerate(outcomes) if not outcome.is_blocked]
            span.set_attribute("nimrag.guardrails.dropped_chunks", len(texts) - len(keep))
        verdict.dropped_chunks = len(texts) - len(keep)
        verdict.timings_ms["retrieval_rails_ms"] = verdict.rail_ms["nimrag drop injected chunks"] = _ms(started)
        verdict.activated.append("nimrag drop injected chunks")
        return keep

    def _span_attributes(self) -> dict:
        return {"nimrag.guardrails.policy": self.policy_id, "nimrag.guardrails.version": self.version}

    def guard_output(self, turns: list[dict], pieces: AsyncIterator[str], verdict: Verdict) -> AsyncIterator[str]:
        """The answer's pieces through the output rails, checked before they are sent, with sensitive data masked.
        A block ends the stream: ``verdict.blocked_by`` says which rail, and the refusal comes last. Its span is
        the child of the span current now."""
        return traced_stream(tracer, "guardrails.output", self._guarded(turns, pieces, verdict),
                             attributes=self._span_attributes())

    async def _guarded(self, turns: list[dict], pieces: AsyncIterator[str], verdict: Verdict) -> AsyncIterator[str]:
        flows = self.config.rails.output.flows
        if flows:
            verdict.activated += list(flows)
            pieces = self.rails.stream_async(messages=turns, generator=pieces)
        kinds = frozenset(self.settings.mask_sensitive_data)
        masker = StreamMasker(kinds, self.settings.phone_regions) if kinds else None
        async for piece in pieces:
            if blocked := _blocking_rail(piece):
                verdict.blocked_by, verdict.refusal = blocked, OUTPUT_REFUSAL
                trace.get_current_span().set_attribute("nimrag.guardrails.blocked_by", blocked)
                return
            piece = masker.feed(piece) if masker else piece
            if piece:
                yield piece
        if masker:
            if rest := masker.flush():
                yield rest
            verdict.masked = dict(masker.found)
            if masker.found:
                verdict.activated.append("nimrag mask sensitive data")


def _blocking_rail(piece: str) -> str | None:
    """NeMo ends a blocked stream with a JSON error as its last piece; an internal error in a rail blocks too."""
    if not piece.startswith('{"error"'):
        return None
    try:
        error = json.loads(piece)["error"]
    except (ValueError, KeyError, TypeError):
        return None
    if error.get("type") != "guardrails_violation":
        log.error("output rail failed, the answer is withheld: %s", error.get("message"))
    return error.get("param") or "output rails"


class Guardrails:
    """The policies in force, each built once per version: an edited policy applies to the next answer."""

    def __init__(self, store: PolicyStore, endpoints: Callable[[], Awaitable[Endpoints]], embed: Embed,
                 protected_texts: list[str], allow_python: bool = False):
        self._store = store
        self._allow_python = allow_python
        self._endpoints = endpoints
        self._embed = embed
        self._protected = protected_texts
        self._built: dict[str, PolicyRuntime] = {}
        self._building = asyncio.Lock()

    async def policy(self, policy_id: str) -> PolicyRuntime:
        version = await asyncio.to_thread(self._store.current_version, policy_id)
        built = self._built.get(policy_id)
        if built and built.version == version:
            return built
        async with self._building:
            built = self._built.get(policy_id)
            if built and built.version == version:
                return built
            files = (await asyncio.to_thread(self._store.get, policy_id, version)).files
            endpoints = await self._endpoints()
            loaded = await asyncio.to_thread(load_policy, files, endpoints, allow_python=self._allow_python,
                                             embed=self._embed, protected_texts=self._protected)
            built = PolicyRuntime(policy_id, version, loaded)
            self._built[policy_id] = built
            return built
