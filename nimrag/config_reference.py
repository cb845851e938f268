"""The configuration reference, docs/configuration.md, generated from the settings classes so that it cannot drift
from them: every environment variable of every service with its type, allowed values, default and description,
the NIM names the services also read, and the variables outside the settings that the code reads (kept by hand in
``OTHER_VARIABLES``; tests/test_config_reference.py finds every ``os.environ`` / ``os.getenv`` read in the packages
and fails on one that is neither a setting nor listed there, and on a stale docs/configuration.md).

``nimrag config-reference`` prints it; ``nimrag config-reference --output docs/configuration.md`` rewrites it.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Union, get_args, get_origin

from pydantic.fields import FieldInfo

from nimrag.cli import SERVICES, _load
from nimrag.services.common.settings import NIM_ENV_NAMES, ServiceSettings

UPDATE_COMMAND = "nimrag config-reference --output docs/configuration.md"
TYPE_NAMES = {int: "int", float: "float", str: "string", bool: "bool", Path: "path"}
TITLES = {"embed": "Embedding service", "rerank": "Reranking service", "llm": "LLM service",
          "pipeline": "RAG pipeline"}

# Settings a service accepts (inherited from ServiceSettings) but none of its code reads; kept by hand. The LLM
# schedules sequences itself, without the shared batcher (nimrag.services.common.serving.BatchedServing) of
# embed and rerank.
UNUSED_FIELDS = {
    "llm": ("cache_path", "max_batch_items", "max_batch_wait_ms", "max_queue_wait_s"),
    "pipeline": ("profile", "served_model_name", "cache_path", "max_queue_items", "max_batch_items",
                 "max_batch_wait_ms", "max_queue_wait_s", "memory_bound", "malloc_arena_max",
                 "memory_trim_interval_s", "max_question_chars"),
}

# How a default computed at start-up reads: "module.function" of the default_factory -> text.
FACTORY_DEFAULTS = {
    "nimrag.services.common.settings.default_cache_path": "`$XDG_CACHE_HOME/nimrag`, else `~/.cache/nimrag`",
    "nimrag.pipeline.settings.default_data_path": "`$XDG_DATA_HOME/nimrag`, else `~/.local/share/nimrag`",
}


@dataclass(frozen=True)
class Variable:
    name: str
    read_by: str  # where: a module of ours, or a library (then ``library``)
    description: str
    library: bool = False  # read by a library nimrag uses, not by nimrag's own code


OTHER_VARIABLES = (
    Variable("OTEL_TRACES_EXPORTER", "services/common/tracing.py",
             "Tracing: `none` (the default: off), `console`, `otlp` (OTLP over HTTP/protobuf), or `console,otlp`. "
             "Any other value stops the service at start-up (exit code 2) naming the accepted ones."),
    Variable("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "services/common/tracing.py",
             "With `otlp`: `http/protobuf` (the default) or `grpc`; any other value stops the service at start-up."),
    Variable("OTEL_EXPORTER_OTLP_PROTOCOL", "services/common/tracing.py",
             "As `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, which wins when both are set."),
    Variable("OTEL_EXPORTER_OTLP_ENDPOINT", "the OpenTelemetry exporter",
             "With `otlp`: where spans go (default `http://localhost:4318` over HTTP, `localhost:4317` over gRPC). "
             "The exporter reads the other standard `OTEL_EXPORTER_OTLP_*` variables too (the `_TRACES_` variants, "
             "headers, timeouts), and the SDK `OTEL_BSP_*` (batch export).", library=True),
    Variable("OTEL_SERVICE_NAME", "the OpenTelemetry SDK",
             "The service name on spans, instead of `nimrag-<service>`; so does `service.name` in "
             "`OTEL_RESOURCE_ATTRIBUTES`.", library=True),
    Variable("NIMRAG_ADMIN_API_KEY", "nimrag/cli.py",
             "`nimrag policy`: the default of `--admin-key`, the pipeline's admin key "
             "(`NIMRAG_PIPELINE_ADMIN_API_KEY` on the pipeline's side)."),
    Variable("NIMRAG_PARENT_PID", "services/common/parent.py",
             "Set by `nimrag up` for each service it starts: the service stops once that process is gone (even "
             "SIGKILLed). Not for setting by hand; a value that is not a process id stops the service."),
    Variable("NIMRAG_PARENT_LOG_FILE", "services/common/parent.py",
             "Set by `nimrag up` with `NIMRAG_PARENT_PID`: the log file a service writes to once `nimrag up` is gone."),
    Variable("XDG_CACHE_HOME", "services/common/settings.py",
             "Base of the default cache path (`$XDG_CACHE_HOME/nimrag`; unset: `~/.cache/nimrag`)."),
    Variable("XDG_DATA_HOME", "pipeline/settings.py",
             "Base of the pipeline's default data path (`$XDG_DATA_HOME/nimrag`; unset: `~/.local/share/nimrag`)."),
    Variable("CUDA_VISIBLE_DEVICES", "services/common/hardware.py",
             "GPU indices the hardware probe (and so profile selection) sees, as CUDA reads them."),
    Variable("HF_HUB_OFFLINE", "nimrag/cli.py",
             "Set to `1` by `nimrag serve`, `up` and `triton serve` unless already set: models load from local "
             "folders and packages only, never from a hub."),
    Variable("TRANSFORMERS_OFFLINE", "nimrag/cli.py", "As `HF_HUB_OFFLINE`: set to `1` unless already set."),
    Variable("HF_HUB_DISABLE_TELEMETRY", "nimrag/cli.py", "Set to `1` unless already set."),
    Variable("NEMO_GUARDRAILS_NO_USAGE_STATS", "guardrails/__init__.py",
             "Set to `1` when the guardrails package is imported, unless already set: NeMo Guardrails sends no "
             "usage statistics."),
    Variable("LD_LIBRARY_PATH", "nimrag/triton/server.py",
             "`nimrag triton serve` adds Python's library folder to it: Triton's Python backend stub links against "
             "libpython."),
)

# Reads whose variable name is computed rather than written at the call: file -> what they read.
COMPUTED_READS = {
    "services/common/settings.py": "the NIM names of NIM_ENV_NAMES (the table 'NIM names')",
    "services/common/profiles.py": "the settings a profile requires (Profile.requires_env, e.g. a TRITON_URL)",
}


INTRO = (
    "Each service reads its settings from environment variables: its prefix (`NIMRAG_EMBED_`, ...) and the setting's "
    "name in capitals. The command line of `nimrag serve` (`--host`, `--port`, `--profile`, `--model`) wins over "
    "them, and they win over the NIM names. A value that does not validate stops `nimrag serve` with exit code 2 and "
    "one line naming the variable. Booleans are `true` or `false` (`1`/`0`, `yes`/`no`, `on`/`off` too). `nimrag up` "
    "starts every service with its own environment, adding the service's `..._JSON_LOGS` and, for the pipeline, the "
    "three services' URLs (`NIMRAG_PIPELINE_*_URL`).")
NIM_INTRO = ("The names NIM containers use are read by every service whose settings have the field, below the "
             "service's own `NIMRAG_` name (which wins when both are set).")
UNUSED_WHY = "inherited from the shared settings, or left over"


def settings_classes() -> dict[str, type[ServiceSettings]]:
    return {name: _load(SERVICES[name].settings) for name in TITLES}


def env_name(settings_cls: type, field: str) -> str:
    return f"{settings_cls.model_config['env_prefix']}{field.upper()}"


def settings_variables() -> set[str]:
    """Every variable the settings classes read: prefixed names and the NIM names."""
    return {env_name(cls, field) for cls in settings_classes().values() for field in cls.model_fields} | set(
        NIM_ENV_NAMES)


def ordered_fields(settings_cls: type) -> list[str]:
    """The shared settings first, then the service's own, then those of its mixins (Triton)."""
    shared = list(ServiceSettings.model_fields)
    own = [f for f in settings_cls.__annotations__ if f in settings_cls.model_fields and f not in shared]
    rest = [f for f in settings_cls.model_fields if f not in shared and f not in own]
    return shared + own + rest


def describe(settings_cls: type, field: str) -> str:
    """The field's description, or that of the class it overrides (a service's ``port`` keeps the base's)."""
    for cls in settings_cls.__mro__:
        info = getattr(cls, "model_fields", {}).get(field)
        if info is not None and info.description:
            return info.description
    raise ValueError(f"{env_name(settings_cls, field)} has no description: give {settings_cls.__name__}.{field} "
                     "Field(description=...)")


def type_text(annotation) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f"`{choice}`" for choice in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " or ".join(type_text(arg) for arg in get_args(annotation) if arg is not type(None))
    return TYPE_NAMES.get(annotation) or getattr(annotation, "__name__", str(annotation))


def bounds_text(info: FieldInfo) -> str:
    """The constraints, as a range (``1 to 65535``), a bound (``> 0``) or a length."""
    found = {type(m).__name__: m for m in info.metadata}  # annotated_types' Ge, Gt, Le, Lt, MinLen, MaxLen
    low = ("≥", found["Ge"].ge) if "Ge" in found else (">", found["Gt"].gt) if "Gt" in found else None
    high = ("≤", found["Le"].le) if "Le" in found else ("<", found["Lt"].lt) if "Lt" in found else None
    if low and high and low[0] == "≥" and high[0] == "≤":
        parts = [f"{number(low[1])} to {number(high[1])}"]
    else:
        parts = [f"{bound[0]} {number(bound[1])}" for bound in (low, high) if bound]
    if "MinLen" in found:
        parts.append(f"length ≥ {found['MinLen'].min_length}")
    if "MaxLen" in found:
        parts.append(f"length ≤ {found['MaxLen'].max_length}")
    return ", ".join(parts)


def number(value) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def default_text(field: str, info: FieldInfo) -> str:
    if info.default_factory is not None:
        key = f"{info.default_factory.__module__}.{info.default_factory.__qualname__}"
        if key not in FACTORY_DEFAULTS:
            raise ValueError(f"the default of {field} is computed by {key}: say how it reads in FACTORY_DEFAULTS "
                             "(nimrag/config_reference.py)")
        return FACTORY_DEFAULTS[key]
    if info.is_required():
        return "required"
    value = info.default
    if value is None:
        return "unset"
    if value == "":
        return "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    text = f"`{number(value)}`"
    if field.endswith("_bytes") and isinstance(value, int) and value >= 1024:
        text += f" ({binary_size(value)})"
    return text


def binary_size(count: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size and count % size == 0:
            return f"{count // size} {unit}"
    return f"{count} bytes"


def cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def service_table(service: str, settings_cls: type) -> list[str]:
    prefix = settings_cls.model_config["env_prefix"]
    unused = UNUSED_FIELDS.get(service, ())
    aliases = {field: name for name, field in NIM_ENV_NAMES.items()}
    lines = [f"## {TITLES[service]} (`nimrag serve {service}`)", "",
             f"`{prefix}` + the name; settings class `{settings_cls.__module__}.{settings_cls.__name__}`.", "",
             "| variable | type | default | description |", "| --- | --- | --- | --- |"]
    for field in ordered_fields(settings_cls):
        if field in unused:
            continue
        info = settings_cls.model_fields[field]
        name = f"`{env_name(settings_cls, field)}`" + (f" (or `{aliases[field]}`)" if field in aliases else "")
        kind = type_text(info.annotation) + (f", {bounds}" if (bounds := bounds_text(info)) else "")
        lines.append(f"| {name} | {cell(kind)} | {cell(default_text(field, info))} | "
                     f"{cell(describe(settings_cls, field))} |")
    if unused:
        names = ", ".join(f"`{env_name(settings_cls, field)}`" for field in unused)
        lines += ["", f"Also accepted, but read by nothing in `nimrag serve {service}` ({UNUSED_WHY}): {names}."]
    return lines + [""]


def nim_table(classes: dict[str, type]) -> list[str]:
    lines = ["## NIM names", "", NIM_INTRO, "", "| variable | sets | in |", "| --- | --- | --- |"]
    for name, field in NIM_ENV_NAMES.items():
        having = [service for service, cls in classes.items() if field in cls.model_fields
                  and field not in UNUSED_FIELDS.get(service, ())]
        lines.append(f"| `{name}` | `{field}` | {', '.join(having) or 'no service'} |")
    return lines + [""]


def other_table() -> list[str]:
    lines = ["## Other variables", "",
             "Read outside the settings classes (by nimrag's code, or by a library where said).", "",
             "| variable | read by | description |", "| --- | --- | --- |"]
    for v in OTHER_VARIABLES:
        where = v.read_by if v.library else f"`{v.read_by}`"
        lines.append(f"| `{v.name}` | {where} | {cell(v.description)} |")
    return lines + [""]


def render() -> str:
    classes = settings_classes()
    lines = ["# Configuration reference", "",
             f"<!-- Generated from the settings classes by `{UPDATE_COMMAND}`: do not edit by hand. -->", "",
             INTRO, ""]
    for service, cls in classes.items():
        lines += service_table(service, cls)
    lines += nim_table(classes) + other_table()
    return "\n".join(lines).rstrip("\n") + "\n"


def main(output: str | None = None) -> int:
    text = render()
    if output is None:
        print(text, end="")
    else:
        Path(output).write_text(text)
    return 0
