"""Request and response shapes of ``POST /v1/embeddings`` (OpenAI's, with NIM's ``input_type`` and ``truncate``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from services.common.fields import INT32_MAX, RequestModel, Unsupported

InputType = Literal["query", "passage"]
Truncate = Literal["NONE", "START", "END"]


def _text_only(value: Any) -> bool:
    """NIM's ``modality``: one value for the batch or one per input; text asks for nothing new."""
    return value == "text" or (isinstance(value, list) and bool(value) and all(v == "text" for v in value))


# What OpenAI, NIM's embedding API and vLLM define beyond the fields declared below: a 400 naming the field,
# unless its value asks for nothing (None or a listed harmless value). See services.common.fields.
EMBEDDING_UNSUPPORTED: dict[str, Unsupported] = {
    "embedding_type": Unsupported("only float embeddings are served (int8, uint8, binary and ubinary are not)",
                                  harmless=("float",)),
    "modality": Unsupported("this service embeds text only", harmless_if=_text_only),
    "nvcf_asset_dir": Unsupported("NVIDIA Cloud Functions assets are not read"),
    "truncate_prompt_tokens": Unsupported("cut long inputs with truncate ('START' or 'END')"),
    "add_special_tokens": Unsupported("special tokens are added as the model expects", harmless=(True,)),
    "normalize": Unsupported("embeddings are normalized as the model was trained"),
    "embed_dtype": Unsupported("embeddings are float32", harmless=("float32",)),
    "priority": Unsupported("requests are served first come, first served", harmless=(0,)),
    "messages": Unsupported("chat-style inputs are not implemented; send the texts in input"),
    "mm_processor_kwargs": Unsupported("this service embeds text only"),
}


class EmbeddingRequest(RequestModel):
    unsupported_fields = EMBEDDING_UNSUPPORTED

    # Checked item by item in the serving layer, which can say exactly which item is wrong and why.
    input: str | list[Any] = Field(..., description="A text or a list of texts.")
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, le=INT32_MAX)
    input_type: InputType | None = None
    truncate: Truncate = "NONE"
    user: str | None = None
