"""Settings shared by every service, read from the environment with pydantic-settings.

Each service subclasses :class:`ServiceSettings` with its own prefix (``NIMRAG_EMBED_``, ...). The NIM names
users already know (``NIM_MODEL_PROFILE``, ``NIM_CACHE_PATH``, ``NIM_SERVED_MODEL_NAME``, ...) are read too, below
the service's own prefixed names, since NIM runs one model per container.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

# NIM environment names and the field each one sets.
NIM_ENV_NAMES = {
    "NIM_MODEL_PROFILE": "profile",
    "NIM_CACHE_PATH": "cache_path",
    "NIM_SERVED_MODEL_NAME": "served_model_name",
    "NIM_MODEL_NAME": "model",  # a model folder to serve instead of the default
    "NIM_SERVER_PORT": "port",
    "NIM_LOG_LEVEL": "log_level",
    "NIM_JSONL_LOGGING": "json_logs",
}


class NimEnvSource(PydanticBaseSettingsSource):
    """Reads the NIM_* names; placed below the prefixed variables so ``NIMRAG_*`` wins."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        for env_name, target in NIM_ENV_NAMES.items():
            if target == field_name and env_name in os.environ:
                return os.environ[env_name], env_name, False
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for field_name in self.settings_cls.model_fields:
            value, _, _ = self.get_field_value(self.settings_cls.model_fields[field_name], field_name)
            if value is not None:
                values[field_name] = value
        return values


def default_cache_path() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nimrag"


class ServiceSettings(BaseSettings):
    """What every service can be told: where to listen, who may call, limits, model choice."""

    model_config = SettingsConfigDict(env_prefix="NIMRAG_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0: every interface).")
    port: int = Field(8000, ge=1, le=65535, description="Port to listen on.")
    api_keys: str = Field("", description="Comma-separated Bearer keys; empty means no key is required.")
    profile: str | None = Field(None, description="Pin an optimization profile by id (NIM_MODEL_PROFILE).")
    served_model_name: str | None = Field(None, description="Name clients use for the model (NIM_SERVED_MODEL_NAME).")
    cache_path: Path = Field(default_factory=default_cache_path, description="Exported/optimized model cache.")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 above).")
    max_queue_items: int = Field(8192, ge=1, description="Items waiting for the engine before new work gets 429.")
    max_batch_items: int | None = Field(None, ge=1, description="Override the profile's items per engine batch.")
    max_batch_wait_ms: float | None = Field(None, ge=0, description="Hold a not-full batch this long for more "
                                            "work (default: the profile's).")
    max_queue_wait_s: float = Field(10.0, gt=0, description="Embed and rerank: refuse (429 + Retry-After) work "
                                    "expected to wait longer than this behind what is queued, judged by measured "
                                    "throughput; below common client timeouts, so admitted work finishes.")
    memory_bound: bool = Field(True, description="Bound resident memory (nimrag.services.common.memory): shrink ONNX "
                               "Runtime's arena after each run, cap glibc's arenas, return freed memory when idle.")
    malloc_arena_max: int = Field(2, ge=1, description="With the bound: most glibc malloc arenas.")
    memory_trim_interval_s: float = Field(10.0, gt=0, description="With the bound: seconds between looks at "
                                          "the CPU time; the first idle interval after a busy one trims.")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")
    json_logs: bool = Field(True, description="Log JSON lines on stderr; false: readable text.")

    @field_validator("log_level")
    @classmethod
    def _upper(cls, v: str) -> str:
        return v.upper()

    @property
    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return init_settings, env_settings, NimEnvSource(settings_cls), dotenv_settings, file_secret_settings
