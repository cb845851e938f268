"""Request bodies of the pipeline, in the NVIDIA RAG Blueprint's spelling (its rag_server ``Prompt`` and
``DocumentSearch``, its ingestor's upload and collection requests) so that its users feel at home.

Every model is a :class:`~nimrag.services.common.fields.RequestModel`: a Blueprint (or OpenAI) field nimrag does not
implement is in the top-level model's ``unsupported_fields`` (a 400 naming it unless its value asks for nothing),
any other unknown field is ignored and named back in the ``x-nimrag-ignored-fields`` header. The nested option
objects nimrag defines itself (``guardrails``, ``filter``) are closed: a mistyped option there would loosen a
restriction, so it is a 422.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from nimrag.services.common.errors import InvalidRequestError
from nimrag.services.common.fields import RequestModel, Unsupported
from nimrag.services.common.openapi import NON_BLANK, served_rule, setting_limit
from nimrag.services.llm.protocol import CHAT_UNSUPPORTED as LLM_CHAT_UNSUPPORTED

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
PIPELINE_MODEL = "nimrag-rag"  # the pipeline's own name for its answers: the LLM service's default model
CollectionName = Annotated[str, Field(pattern=NAME_PATTERN)]
StopSequence = Annotated[str, Field(min_length=1, max_length=256)]
StopInput = StopSequence | Annotated[list[StopSequence], Field(max_length=256)] | None
QUESTION_LAST = "The last one is the user's question, not blank."

# --- known but unsupported fields ------------------------------------------------------------------------------
# The Blueprint's request fields beyond those declared below, from its rag_server Prompt / DocumentSearch and its
# ingestor's DocumentUploadRequest / CreateCollectionRequest. Each is a 400 naming it, unless its value asks for
# nothing (None, or a listed harmless value: the Blueprint's "off").
_OTHER_HOSTS = ("per-request service URLs are refused: the pipeline calls only the services its settings name "
                "(NIMRAG_PIPELINE_EMBED_URL, NIMRAG_PIPELINE_RERANK_URL, NIMRAG_PIPELINE_LLM_URL) and stores "
                "its collections itself")
_NO_VLM = "nimrag serves no vision-language model"
_NO_REASONING = "the LLM service's models do not reason, so there is no thinking budget"
_NO_METADATA = "custom document metadata is not implemented; filter by document with filter.sources"

SEARCH_UNSUPPORTED: dict[str, Unsupported] = {
    "vdb_endpoint": Unsupported(_OTHER_HOSTS, harmless=("",)),
    "embedding_endpoint": Unsupported(_OTHER_HOSTS, harmless=("",)),
    "reranker_endpoint": Unsupported(_OTHER_HOSTS, harmless=("",)),
    "enable_query_rewriting": Unsupported("query rewriting by an LLM is not implemented; a follow-up question is "
                                          "searched together with the question before it", harmless=(False,)),
    "enable_filter_generator": Unsupported("filters generated from the question are not implemented",
                                           harmless=(False,)),
    "filter_expr": Unsupported("metadata filter expressions are not implemented yet; filter by document with "
                               "filter.sources", harmless=("", [])),
}

GENERATE_UNSUPPORTED: dict[str, Unsupported] = {
    **SEARCH_UNSUPPORTED,
    "llm_endpoint": Unsupported(_OTHER_HOSTS, harmless=("",)),
    "vlm_endpoint": Unsupported(_OTHER_HOSTS, harmless=("",)),
    "enable_vlm_inference": Unsupported(_NO_VLM, harmless=(False,)),
    "vlm_model": Unsupported(_NO_VLM, harmless=("",)),
    "vlm_temperature": Unsupported(_NO_VLM),
    "vlm_top_p": Unsupported(_NO_VLM),
    "vlm_max_tokens": Unsupported(_NO_VLM),
    "vlm_max_total_images": Unsupported(_NO_VLM, harmless=(0,)),
    "vlm_enable_thinking": Unsupported(_NO_VLM, harmless=(False,)),
    "vlm_thinking_token_budget": Unsupported(_NO_VLM),
    "vlm_filter_thinking_tokens": Unsupported(_NO_VLM),
    "min_tokens": Unsupported("a minimum answer length is not implemented (the LLM service has none)",
                              harmless=(0,)),
    "ignore_eos": Unsupported("answers end where the model ends them", harmless=(False,)),
    "min_thinking_tokens": Unsupported(_NO_REASONING, harmless=(0,)),
    "max_thinking_tokens": Unsupported(_NO_REASONING, harmless=(0,)),
    "agentic": Unsupported("the Blueprint's agentic (plan-and-execute) pipeline is not implemented",
                           harmless=(False,)),
    "enable_streaming": Unsupported("enable_streaming steers the Blueprint's agentic pipeline only; use stream",
                                    harmless=(True,)),
}

# OpenAI's chat fields on /v1/chat/completions that ask for what a cited RAG answer cannot give: the LLM service's
# own refusals where they apply as they are (tools, audio), and the fields a RAG answer adds to them.
_FROM_LLM_CHAT = ("tools", "tool_choice", "parallel_tool_calls", "functions", "function_call",
                  "messages[].tool_calls", "messages[].tool_call_id", "messages[].function_call", "audio",
                  "modalities", "prediction", "reasoning_effort")
CHAT_UNSUPPORTED: dict[str, Unsupported] = {
    **GENERATE_UNSUPPORTED,
    **{name: reason for name, reason in LLM_CHAT_UNSUPPORTED.items() if name in _FROM_LLM_CHAT},
    "n": Unsupported("one answer per request", harmless=(1,)),
    "logprobs": Unsupported("token logprobs of a RAG answer are not returned", harmless=(False,)),
    "top_logprobs": Unsupported("token logprobs of a RAG answer are not returned", harmless=(0,)),
    "response_format": Unsupported("a RAG answer is text with [n] citations", harmless=({"type": "text"},)),
}

UPLOAD_UNSUPPORTED: dict[str, Unsupported] = {
    "vdb_endpoint": Unsupported(_OTHER_HOSTS, harmless=("",)),
    "custom_metadata": Unsupported(_NO_METADATA, harmless=([],)),
    "documents_catalog_metadata": Unsupported("per-document catalog metadata is not stored", harmless=([],)),
    "generate_summary": Unsupported("document summaries are not implemented", harmless=(False,)),
    "summary_options": Unsupported("document summaries are not implemented"),
    "enable_pdf_split_processing": Unsupported("PDFs are parsed page by page in one pass", harmless=(False,)),
    "pdf_split_processing_options": Unsupported("PDFs are parsed page by page in one pass"),
}

CREATE_COLLECTION_UNSUPPORTED: dict[str, Unsupported] = {
    "vdb_endpoint": Unsupported(_OTHER_HOSTS, harmless=("",)),
    "metadata_schema": Unsupported(_NO_METADATA, harmless=([],)),
    **{name: Unsupported("collection catalog metadata is not stored", harmless=("",))
       for name in ("description", "owner", "created_by", "business_domain")},
    "tags": Unsupported("collection catalog metadata is not stored", harmless=([],)),
    "status": Unsupported("collection catalog metadata is not stored", harmless=("Active",)),
}


class ConflictingFields(InvalidRequestError):
    def __init__(self, first: str, second: str):
        super().__init__(f"The fields '{first}' and '{second}' disagree: give one of them.", param=second,
                         code="conflicting_fields")


# --- retrieval ---------------------------------------------------------------------------------------------------
class Filter(RequestModel):
    model_config = ConfigDict(extra="forbid")

    sources: list[str] | None = Field(None, max_length=1000, description="Only chunks of these documents.")


class Message(RequestModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(..., max_length=65536, description="The last message's: not blank.")

    def turn(self) -> dict:
        """The message as the LLM gets it: its declared fields only (undeclared ones were named back)."""
        return {"role": self.role, "content": self.content}


# confidence_threshold needs the reranker: refused when the request turns it off (or the server does).
_THRESHOLD_NEEDS_RERANKER = {"anyOf": [{"properties": {"confidence_threshold": {"enum": [None, 0]}}},
                                       {"properties": {"enable_reranker": {"enum": [None, True]}}}]}


class RetrievalKnobs(RequestModel):
    model_config = ConfigDict(json_schema_extra=_THRESHOLD_NEEDS_RERANKER)

    collection_name: CollectionName | None = Field(None, description="One collection (nimrag's, and the "
                                                   "Blueprint's before collection_names); with "
                                                   "collection_names, the one they name.")
    collection_names: Annotated[list[CollectionName], setting_limit(maxItems="max_collections_per_query")] | None = \
        Field(None, min_length=1, description="The Blueprint's: search these collections together (one candidate "
              "pool, reranked together); at most NIMRAG_PIPELINE_MAX_COLLECTIONS_PER_QUERY.")
    vdb_top_k: int | None = Field(None, ge=1, le=1000)
    reranker_top_k: int | None = Field(None, ge=1, le=100)
    enable_reranker: bool | None = None
    confidence_threshold: float | None = Field(None, ge=0, le=1, description="Chunks the reranker scores below "
                                               "this are not relevant (NIMRAG_PIPELINE_RELEVANCE_THRESHOLD when "
                                               "unset); needs the reranker.")
    search_mode: Literal["hybrid", "dense", "lexical"] = "hybrid"
    filter: Filter | None = None
    embedding_model: str | None = Field(None, max_length=256, description="Accepted when it names the model the "
                                        "embedding service serves (the one the collections were made with).")
    reranker_model: str | None = Field(None, max_length=256, description="Accepted when it names the model the "
                                       "reranking service serves.")

    def requested_collections(self) -> list[str] | None:
        """The collections asked for (repeats dropped), or None for the default one. ``collection_name`` and
        ``collection_names`` together must name the same one (the Blueprint's older server let the single name
        win; a request naming two different things is refused instead)."""
        names = list(dict.fromkeys(self.collection_names)) if self.collection_names else None
        if self.collection_name is not None and names is not None and names != [self.collection_name]:
            raise ConflictingFields("collection_name", "collection_names")
        return names or ([self.collection_name] if self.collection_name else None)


def _not_blank(text: str, what: str) -> str:
    if not text.strip():
        raise ValueError(f"the {what} is empty")
    return text


class SearchRequest(RetrievalKnobs):
    """``POST /v1/search``: the query, or the conversation it comes from (``messages``, as the Blueprint's)."""

    unsupported_fields = SEARCH_UNSUPPORTED
    model_config = ConfigDict(json_schema_extra={"allOf": [_THRESHOLD_NEEDS_RERANKER, {
        "anyOf": [{"required": ["query"], "properties": {"query": {"type": "string"}}},
                  {"required": ["messages"], "properties": {"messages": {"type": "array", "minItems": 1}}}]}]})

    query: Annotated[str, served_rule(pattern=NON_BLANK)] | None = Field(None, min_length=1, max_length=65536,
                                                                         description="Not blank.")
    messages: list[Message] | None = Field(None, max_length=64, description="Without a query: searched as a "
                                           "follow-up is (the last question, the user's and not blank, with "
                                           "the one before it); with one: the conversation before it.")
    enable_citations: bool | None = Field(None, description="The Blueprint's switch for image/table/chart "
                                          "content; results here are text chunks, always returned.")

    @field_validator("query")
    @classmethod
    def _query_not_blank(cls, v: str | None) -> str | None:
        return v if v is None else _not_blank(v, "query")

    @model_validator(mode="after")
    def _something_to_search(self):
        if self.query is None:
            if not self.messages:
                raise ValueError("give a query, or messages that end with the user's question")
            _ends_with_a_question(self.messages)
        return self

    def turns(self) -> list[dict]:
        """The conversation to search for: the messages, then the query as the latest question."""
        turns = [m.turn() for m in self.messages or ()]
        if self.query is not None and turns[-1:] != [{"role": "user", "content": self.query}]:
            turns.append({"role": "user", "content": self.query})
        return turns


# --- answers -----------------------------------------------------------------------------------------------------
class GuardrailsOptions(RequestModel):
    """Which guardrails policy answers (``config_id``, as NeMo Guardrails' server names it), or none."""

    model_config = ConfigDict(extra="forbid")

    config_id: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    enabled: bool = True


def _ends_with_a_question(messages: list[Message]) -> list[Message]:
    if messages[-1].role != "user" or not messages[-1].content.strip():
        raise ValueError("the last message must be a non-empty user question")
    return messages


def _switches_agree(on: bool) -> dict:
    return {"properties": {"enable_guardrails": {"const": on},
                           "guardrails": {"properties": {"enabled": {"const": on}}}}}


# enable_guardrails and guardrails.enabled agree when both are given.
_GUARDRAILS_SWITCHES_AGREE = {"anyOf": [{"properties": {"enable_guardrails": {"type": "null"}}},
                                        _switches_agree(True), _switches_agree(False)]}


class GenerateRequest(RetrievalKnobs):
    """``POST /v1/generate``: the Blueprint's ``Prompt``."""

    unsupported_fields = GENERATE_UNSUPPORTED
    model_config = ConfigDict(json_schema_extra={"allOf": [_THRESHOLD_NEEDS_RERANKER, _GUARDRAILS_SWITCHES_AGREE]})

    messages: list[Message] = Field(..., min_length=1, max_length=64, description=QUESTION_LAST)
    use_knowledge_base: bool = True
    stream: bool = True
    max_tokens: int | None = Field(None, ge=1, le=32768)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: list[StopSequence] | None = Field(None, max_length=256, description="Strings that end the answer "
                                            "(a string or a list, as OpenAI's).")
    model: str | None = Field(None, max_length=256, description=f"A model the LLM service serves; "
                              f"'{PIPELINE_MODEL}' or none: its default.")
    enable_citations: bool = Field(True, description="False: the answer comes without its citations.")
    enable_guardrails: bool | None = Field(None, description="The Blueprint's switch: guardrails.enabled (the "
                                           "same when both are given).")
    guardrails: GuardrailsOptions = Field(default_factory=GuardrailsOptions)

    @field_validator("messages")
    @classmethod
    def _question_last(cls, v: list[Message]) -> list[Message]:
        return _ends_with_a_question(v)

    @field_validator("stop", mode="before", json_schema_input_type=StopInput)
    @classmethod
    def _stop_list(cls, v):
        return [v] if isinstance(v, str) else v

    def guardrails_choice(self) -> bool | None:
        """Whether the request wants its answer guarded (``guardrails.enabled``, or the Blueprint's
        ``enable_guardrails``: they must agree when both are given); None when it leaves it to the server."""
        explicit = self.guardrails.enabled if "enabled" in self.guardrails.model_fields_set else None
        if None not in (explicit, self.enable_guardrails) and explicit != self.enable_guardrails:
            raise ConflictingFields("enable_guardrails", "guardrails.enabled")
        return explicit if explicit is not None else self.enable_guardrails


class ChatRequest(GenerateRequest):
    """OpenAI's chat completions on the pipeline: non-streaming unless asked, as OpenAI."""

    unsupported_fields = CHAT_UNSUPPORTED

    stream: bool = False


# --- ingestion ---------------------------------------------------------------------------------------------------
class CreateCollection(RequestModel):
    unsupported_fields = CREATE_COLLECTION_UNSUPPORTED

    collection_name: str = Field(..., pattern=NAME_PATTERN)
    index_kind: Literal["flat", "hnsw", "ivf"] = "flat"


class SplitOptions(RequestModel):
    chunk_size: int | None = Field(None, ge=16, le=8192)
    chunk_overlap: int | None = Field(None, ge=0, le=4096, description="Less than chunk_size (the server's "
                                      "NIMRAG_PIPELINE_CHUNK_SIZE when that is not given).")


class UploadOptions(RequestModel):
    """The ``data`` form field of ``POST /v1/documents`` (the Blueprint's ``split_options`` included)."""

    unsupported_fields = UPLOAD_UNSUPPORTED

    collection_name: str | None = Field(None, pattern=NAME_PATTERN)
    blocking: bool = False
    split_options: SplitOptions = Field(default_factory=SplitOptions)
