"""What the reranking service serves: a cross-encoder folder, or an encoder (the bundled MiniLM by default)
turned into a scorer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nimrag.services.common.errors import StartupError
from nimrag.services.embed.model import DEFAULT_MODEL_NAME, default_model_path
from nimrag.services.rerank.settings import RerankSettings

CROSS_ENCODER = "cross-encoder"
LATE_INTERACTION = "late-interaction"
BI_ENCODER = "bi-encoder"

SCORER_DESCRIPTIONS = {
    CROSS_ENCODER: "cross-encoder: query and passage encoded together, one logit per pair",
    LATE_INTERACTION: "late interaction (MaxSim) over an encoder's token embeddings: each query token's best "
                      "cosine match among the passage's tokens, averaged over the query tokens ([CLS]/[SEP] "
                      "left out)",
    BI_ENCODER: "bi-encoder: cosine similarity of separately encoded, pooled query and passage embeddings",
}


@dataclass(frozen=True)
class RerankModelInfo:
    path: Path
    name: str
    scorer: str  # one of SCORER_DESCRIPTIONS
    max_tokens: int

    @property
    def describe_scorer(self) -> str:
        return SCORER_DESCRIPTIONS[self.scorer]


def _config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise StartupError(f"'{folder}' is not a model folder: cannot read config.json ({exc})") from exc


def _is_cross_encoder(config: dict, folder: Path) -> bool:
    if not any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or []):
        return False
    if config.get("num_labels", len(config.get("id2label") or {0: ""})) != 1:
        raise StartupError(f"'{folder}' has more than one output label; a reranker needs exactly one")
    return True


def load_model_info(settings: RerankSettings) -> RerankModelInfo:
    """A cross-encoder folder serves as one; any other encoder (the bundled one by default) as ``scorer`` says."""
    if not settings.model:
        # all-MiniLM-L6-v2 was trained on sequences up to 256 tokens
        return RerankModelInfo(default_model_path(), settings.served_model_name or DEFAULT_MODEL_NAME,
                               settings.scorer, min(settings.max_tokens or 256, 256))
    folder = Path(settings.model).expanduser()
    config = _config(folder)
    scorer = CROSS_ENCODER if _is_cross_encoder(config, folder) else settings.scorer
    limit = int(config.get("max_position_embeddings", 512))
    if scorer != CROSS_ENCODER:  # a sentence-transformers encoder says how long its training sequences were
        st_config = folder / "sentence_bert_config.json"
        if st_config.is_file():
            limit = min(limit, int(json.loads(st_config.read_text()).get("max_seq_length") or limit))
    return RerankModelInfo(folder, settings.served_model_name or folder.name, scorer,
                           min(settings.max_tokens or limit, limit))
