"""What the reranking service serves: a cross-encoder folder, or the bundled bi-encoder as a scorer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import StartupError
from services.embed.model import DEFAULT_MODEL_NAME, default_model_path
from services.rerank.settings import RerankSettings

CROSS_ENCODER = "cross-encoder"
BI_ENCODER = "bi-encoder"


@dataclass(frozen=True)
class RerankModelInfo:
    path: Path
    name: str
    scorer: str  # CROSS_ENCODER or BI_ENCODER
    max_tokens: int

    @property
    def describe_scorer(self) -> str:
        if self.scorer == CROSS_ENCODER:
            return "cross-encoder: query and passage encoded together, one logit per pair"
        return ("bi-encoder: cosine similarity of separately encoded query and passage embeddings "
                "(no cross-encoder is bundled; point NIMRAG_RERANK_MODEL at one to serve it)")


def _config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise StartupError(f"'{folder}' is not a model folder: cannot read config.json ({exc})") from exc


def load_model_info(settings: RerankSettings) -> RerankModelInfo:
    if not settings.model:
        folder = default_model_path()
        limit = 256  # all-MiniLM-L6-v2 was trained on sequences up to 256 tokens
        return RerankModelInfo(folder, settings.served_model_name or DEFAULT_MODEL_NAME, BI_ENCODER,
                               min(settings.max_tokens or limit, limit))
    folder = Path(settings.model).expanduser()
    config = _config(folder)
    if not any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or []):
        raise StartupError(f"'{folder}' is not a cross-encoder: its config.json names no "
                           "*ForSequenceClassification architecture")
    if config.get("num_labels", len(config.get("id2label") or {0: ""})) != 1:
        raise StartupError(f"'{folder}' has more than one output label; a reranker needs exactly one")
    limit = int(config.get("max_position_embeddings", 512))
    return RerankModelInfo(folder, settings.served_model_name or folder.name, CROSS_ENCODER,
                           min(settings.max_tokens or limit, limit))
