"""Request and response shapes: NIM's ``/v1/ranking`` and the Cohere/Jina/TEI/vLLM-style ``/v1/rerank``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from nimrag.services.common.fields import INT32_MAX, RequestModel, Unsupported
from nimrag.services.common.openapi import NON_BLANK, served_rule, setting_limit

# What Cohere (v1 and v2), Jina and vLLM define for /v1/rerank beyond the fields declared below: a 400 naming
# the field, unless its value asks for nothing (None or a listed harmless value). See nimrag.services.common.fields.
RERANK_UNSUPPORTED: dict[str, Unsupported] = {
    "rank_fields": Unsupported("documents are ranked by their text", harmless=(["text"],)),
    "max_chunks_per_doc": Unsupported("documents are not split into chunks; long ones are cut (truncate)"),
    "max_tokens_per_doc": Unsupported("documents are cut at the model's length (truncate), not at a chosen one"),
    "truncate_prompt_tokens": Unsupported("documents are cut at the model's length (truncate), not at a chosen "
                                          "one"),
    "priority": Unsupported("requests are served first come, first served", harmless=(0,)),
    "mm_processor_kwargs": Unsupported("this service ranks text only"),
}


# As the serving layer checks the query and every passage (its 400s name the one that is not).
Text = Annotated[str, served_rule(pattern=NON_BLANK), setting_limit(maxLength="max_chars")]
TRUNCATE_NONE = ("'NONE': a query and passage over the model's token limit (max_model_len in GET /v1/models) "
                 "is a 400; 'END': cut.")


class TextItem(RequestModel):
    text: Text


class RankingRequest(RequestModel):
    # NIM's ranking API defines no fields beyond these: any other is ignored and named back.
    model: str | None = None
    query: TextItem
    passages: Annotated[list[TextItem], served_rule(minItems=1), setting_limit(maxItems="max_passages")]
    truncate: Literal["NONE", "END"] = Field("NONE", description=TRUNCATE_NONE)


class RerankRequest(RequestModel):
    unsupported_fields = RERANK_UNSUPPORTED

    model: str | None = None
    query: Text
    documents: Annotated[list[Text | TextItem], served_rule(minItems=1), setting_limit(maxItems="max_passages")]
    top_n: int | None = Field(None, ge=1, le=INT32_MAX)
    return_documents: bool = False
    # Cohere-style clients expect long documents to be cut, not refused
    truncate: Literal["NONE", "END"] = Field("END", description=TRUNCATE_NONE)
