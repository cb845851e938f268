"""Request and response shapes of ``POST /v1/embeddings`` (OpenAI's, with NIM's ``input_type`` and ``truncate``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, WithJsonSchema

from nimrag.services.common.fields import INT32_MAX, RequestModel, Unsupported
from nimrag.services.common.openapi import NON_BLANK, SETTING_LIMITS

InputType = Literal["query", "passage"]
Truncate = Literal["NONE", "START", "END"]


def _text_only(value: Any) -> bool:
    """NIM's ``modality``: one value for the batch or one per input; text asks for nothing new."""
    return value == "text" or (isinstance(value, list) and bool(value) and all(v == "text" for v in value))


# What OpenAI, NIM's embedding API and vLLM define beyond the fields declared below: a 400 naming the field,
# unless its value asks for nothing (None or a listed harmless value). See nimrag.services.common.fields.
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


# What the serving layer accepts of ``input``, item by item (its 400s say which item is wrong and why).
_TEXT = {"type": "string", "pattern": NON_BLANK, SETTING_LIMITS: {"maxLength": "max_chars"}}
_INPUT_SCHEMA = {"anyOf": [_TEXT, {"type": "array", "items": _TEXT, "minItems": 1,
                                   SETTING_LIMITS: {"maxItems": "max_inputs"}}]}


class EmbeddingRequest(RequestModel):
    unsupported_fields = EMBEDDING_UNSUPPORTED

    # Checked item by item in the serving layer, which can say exactly which item is wrong and why.
    input: Annotated[str | list[Any], WithJsonSchema(_INPUT_SCHEMA)] = Field(
        ..., description="A text or a list of texts, none blank; with truncate 'NONE', each within the model's "
        "token limit (max_model_len in GET /v1/models).")
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, le=INT32_MAX, description="The model's own size or one of the "
                                   "sizes it was trained for (GET /v1/metadata: dimension, matryoshka_dims).")
    input_type: InputType | None = Field(None, description="Needed by an asymmetric model (GET /v1/metadata).")
    truncate: Truncate = "NONE"
    user: str | None = None
