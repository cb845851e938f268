"""Request and response shapes: NIM's ``/v1/ranking`` and the Cohere/Jina/TEI/vLLM-style ``/v1/rerank``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from services.common.fields import INT32_MAX, RequestModel, Unsupported

# What Cohere (v1 and v2), Jina and vLLM define for /v1/rerank beyond the fields declared below: a 400 naming
# the field, unless its value asks for nothing (None or a listed harmless value). See services.common.fields.
RERANK_UNSUPPORTED: dict[str, Unsupported] = {
    "rank_fields": Unsupported("documents are ranked by their text", harmless=(["text"],)),
    "max_chunks_per_doc": Unsupported("documents are not split into chunks; long ones are cut (truncate)"),
    "max_tokens_per_doc": Unsupported("documents are cut at the model's length (truncate), not at a chosen one"),
    "truncate_prompt_tokens": Unsupported("documents are cut at the model's length (truncate), not at a chosen "
                                          "one"),
    "priority": Unsupported("requests are served first come, first served", harmless=(0,)),
    "mm_processor_kwargs": Unsupported("this service ranks text only"),
}


class TextItem(RequestModel):
    text: str


class RankingRequest(RequestModel):
    # NIM's ranking API defines no fields beyond these: any other is ignored and named back.
    model: str | None = None
    query: TextItem
    passages: list[TextItem]
    truncate: Literal["NONE", "END"] = "NONE"


class RerankRequest(RequestModel):
    unsupported_fields = RERANK_UNSUPPORTED

    model: str | None = None
    query: str
    documents: list[str | TextItem]
    top_n: int | None = Field(None, ge=1, le=INT32_MAX)
    return_documents: bool = False
    truncate: Literal["NONE", "END"] = "END"  # Cohere-style clients expect long documents to be cut, not refused
