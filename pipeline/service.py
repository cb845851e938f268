"""The pipeline's serving layer: collections, ingestion tasks, search and answers. Routers stay thin and call
this only; its collaborators are built by the composition root (nimrag.pipeline.app.build_service) and passed in."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from nimrag.guardrails.runtime import (
    Endpoints,
    Guardrails,
    PolicyError,
    PolicyRuntime,
    Verdict,
)
from nimrag.guardrails.service import api_errors
from nimrag.guardrails.store import PolicyStore
from nimrag.pipeline.answer import Answerer, AnswerEvent, generate
from nimrag.pipeline.chunking import Chunker
from nimrag.pipeline.clients import DependencyError, ServiceClients
from nimrag.pipeline.errors import CollectionConflict, CollectionMissing
from nimrag.pipeline.ingest import FileReport, IngestItem, Ingestor
from nimrag.pipeline.metrics import PipelineMetrics
from nimrag.pipeline.protocol import (
    PIPELINE_MODEL,
    GenerateRequest,
    RetrievalKnobs,
    SearchRequest,
)
from nimrag.pipeline.retrieval import Retriever, SearchOptions, retrieval_query
from nimrag.pipeline.settings import PipelineSettings
from nimrag.pipeline.tasks import INTERRUPTED, TaskStore, TaskStoreUnavailable
from nimrag.pipeline.vectorstore.base import (
    CollectionExists,
    CollectionInfo,
    CollectionNotFound,
    CollectionOptions,
    InvalidCollectionName,
    StoreError,
    VectorCollection,
    VectorStore,
)
from nimrag.services.common.errors import InvalidRequestError, NotFoundError

logger = logging.getLogger("nimrag.pipeline")


class PipelineService:
    def __init__(self, settings: PipelineSettings, *, store: VectorStore, clients: ServiceClients,
                 retriever: Retriever, answerer: Answerer, ingestor: Ingestor, guardrails: Guardrails,
                 policy_store: PolicyStore, guardrails_endpoints: Callable[[], Awaitable[Endpoints]],
                 tasks: TaskStore, metrics: PipelineMetrics):
        self.settings = settings
        self.store = store
        self.clients = clients
        self.retriever = retriever
        self.answerer = answerer
        self.ingestor = ingestor
        self.guardrails = guardrails
        self.policy_store = policy_store
        self.guardrails_endpoints = guardrails_endpoints
        self.tasks = tasks
        self.metrics = metrics
        self._background: set[asyncio.Task] = set()

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.ingestor.close()
        await self.clients.close()
        await asyncio.to_thread(self.tasks.close)
        await self.store.close()

    async def dependency_health(self) -> dict[str, dict]:
        """The model services, the vector store and the task store: each "ready" or what is wrong with it."""
        services, vector_store, task_store = await asyncio.gather(
            self.clients.health(), self._vector_store_health(), self._task_store_health())
        return {**services, "vector_store": vector_store, "task_store": task_store}

    async def _vector_store_health(self) -> dict:
        health = {"backend": self.settings.vector_store}
        try:
            await self.store.list()
        except StoreError as exc:
            return {**health, "status": f"unavailable: {type(exc).__name__}: {exc}"}
        return {**health, "status": "ready"}

    async def _task_store_health(self) -> dict:
        health = {"backend": self.settings.task_store}
        try:
            await asyncio.to_thread(self.tasks.check)
        except TaskStoreUnavailable as exc:
            return {**health, "status": f"unavailable: {exc.message}"}
        return {**health, "status": "ready"}

    # --- collections ------------------------------------------------------------------------------------------
    async def collection(self, name: str | None, param: str = "collection_name") -> VectorCollection:
        """An existing collection (opening one may rebuild its index: the store does that off the event loop)."""
        name = name or self.settings.default_collection
        try:
            return await self.store.open(name)
        except CollectionNotFound:
            raise CollectionMissing(name, param) from None
        except InvalidCollectionName as exc:
            raise InvalidRequestError(str(exc), param=param) from None

    async def list_collections(self) -> list[dict]:
        return [collection_view(info) for info in await self.store.list()]

    async def create_collection(self, name: str, index_kind: str = "flat") -> dict:
        dimension = (await self.clients.embed(["dimension probe"], "passage")).shape[1]
        try:
            await self.store.create(name, int(dimension), options=CollectionOptions(index=index_kind))
        except CollectionExists:
            raise CollectionConflict(f"Collection '{name}' already exists.", param="collection_name",
                                     code="collection_exists") from None
        except InvalidCollectionName as exc:
            raise InvalidRequestError(str(exc), param="collection_name") from None
        return {"collection_name": name, "dimension": int(dimension), "index_kind": index_kind}

    async def ensure_collection(self, name: str | None) -> VectorCollection:
        name = name or self.settings.default_collection
        if not await self.store.exists(name):
            try:
                await self.create_collection(name)
            except CollectionConflict:
                pass  # created meanwhile by another request
        return await self.collection(name)

    async def delete_collection(self, name: str) -> None:
        try:
            await self.store.delete(name)
        except CollectionNotFound:
            raise CollectionMissing(name) from None
        except InvalidCollectionName as exc:
            raise InvalidRequestError(str(exc), param="collection_name") from None

    # --- documents --------------------------------------------------------------------------------------------
    async def list_documents(self, collection_name: str | None) -> dict:
        docs = await (await self.collection(collection_name)).list_documents()
        return {"documents": [dataclasses.asdict(d) for d in docs], "total_documents": len(docs)}

    async def delete_documents(self, collection_name: str | None, names: list[str]) -> dict:
        collection = await self.collection(collection_name)
        deleted = [name for name in names if await collection.delete_document(name)]
        missing = sorted(set(names) - set(deleted))
        return {"message": f"Deleted {len(deleted)} document(s).", "deleted": deleted, "not_found": missing}

    # --- ingestion --------------------------------------------------------------------------------------------
    def chunker(self, chunk_size: int | None, chunk_overlap: int | None) -> Chunker:
        size = chunk_size or self.settings.chunk_size
        overlap = min(self.settings.chunk_overlap, size // 4) if chunk_overlap is None else chunk_overlap
        try:
            return Chunker(chunk_size=size, chunk_overlap=overlap)
        except ValueError as exc:
            raise InvalidRequestError(str(exc), param="split_options") from None

    async def start_ingest(self, collection_name: str | None, items: list[IngestItem], chunker: Chunker,
                           blocking: bool) -> dict:
        collection = await self.ensure_collection(collection_name)
        task_id = uuid.uuid4().hex
        await asyncio.to_thread(self.tasks.create, task_id, collection.name, len(items))
        job = asyncio.create_task(self._run_ingest(task_id, collection, items, chunker))
        self._background.add(job)
        job.add_done_callback(self._background.discard)
        if blocking:
            await asyncio.shield(job)
            return await self.task_status(task_id)
        return {"task_id": task_id, "state": "PENDING", "message": f"Ingesting {len(items)} file(s) into "
                f"'{collection.name}'; GET /v1/status?task_id={task_id} for progress."}

    async def _run_ingest(self, task_id: str, collection: VectorCollection, items: list[IngestItem],
                          chunker: Chunker) -> None:
        async def file_done(report: FileReport) -> None:
            await asyncio.to_thread(self.tasks.add_file, task_id, report)
            self.metrics.observe_file(report.status, report.chunks)

        started, error = time.perf_counter(), None
        try:
            await self.ingestor.ingest(collection, items, chunker, on_file=file_done)
        except asyncio.CancelledError:  # shutting down: say so now rather than at the next start
            await self._finish_task(task_id, INTERRUPTED, started)
            raise
        except Exception as exc:  # noqa: BLE001 - the task's status carries the failure to the client
            error = f"{type(exc).__name__}: {exc}"
        await self._finish_task(task_id, error, started)

    async def _finish_task(self, task_id: str, error: str | None, started: float) -> None:
        """Record the end; a store that cannot take it is logged (the task then reads interrupted), since no
        client waits on a background ingest to be told."""
        try:
            await asyncio.to_thread(self.tasks.finish, task_id, error, time.perf_counter() - started)
        except TaskStoreUnavailable as exc:
            logger.error("upload task %s ended (%s) but its end was not recorded: %s", task_id,
                         error or "finished", exc.message)

    async def task_status(self, task_id: str) -> dict:
        status = await asyncio.to_thread(self.tasks.get, task_id)
        if status is None:
            raise NotFoundError(f"No ingestion task '{task_id}'.", param="task_id", code="task_not_found")
        return status

    # --- retrieval and answers --------------------------------------------------------------------------------
    async def collections_for(self, knobs: RetrievalKnobs) -> list[VectorCollection]:
        """The collections a search or answer names (``collection_names``, or ``collection_name``, or the
        default), all opened: a missing one is a 404 naming it."""
        names = knobs.requested_collections() or [self.settings.default_collection]
        limit = self.settings.max_collections_per_query
        if len(names) > limit:
            raise InvalidRequestError(f"{len(names)} collections named; at most {limit} are searched at once "
                                      "(NIMRAG_PIPELINE_MAX_COLLECTIONS_PER_QUERY).", param="collection_names",
                                      code="too_many_collections")
        param = "collection_names" if knobs.collection_names else "collection_name"
        return [await self.collection(name, param) for name in names]

    async def check_models(self, knobs: RetrievalKnobs) -> None:
        """The Blueprint's per-request embedding and reranker models, accepted when they are the served ones."""
        for field, service in (("embedding_model", "embed"), ("reranker_model", "rerank")):
            asked = getattr(knobs, field)
            if asked and asked != (served := await self.clients.model(service)):
                raise InvalidRequestError(f"The {field} '{asked}' is not served here: the pipeline uses its {service} "
                                          f"service's model '{served}' only.", param=field, code="model_not_served")

    def search_options(self, knobs: RetrievalKnobs) -> SearchOptions:
        s = self.settings
        rerank = s.enable_reranker if knobs.enable_reranker is None else knobs.enable_reranker
        if knobs.confidence_threshold and not rerank:
            raise InvalidRequestError("confidence_threshold applies to the reranker's scores, and reranking is off "
                                      "for this request.", param="confidence_threshold",
                                      code="threshold_needs_reranker")
        threshold = s.relevance_threshold if knobs.confidence_threshold is None else knobs.confidence_threshold
        return SearchOptions(vdb_top_k=knobs.vdb_top_k or s.vdb_top_k,
                             reranker_top_k=knobs.reranker_top_k or s.reranker_top_k, rerank=rerank,
                             rerank_candidates=s.rerank_candidates, threshold=threshold,
                             sources=knobs.filter.sources if knobs.filter else None, mode=knobs.search_mode)

    async def search(self, request: SearchRequest) -> dict:
        collections = await self.collections_for(request)
        options = self.search_options(request)
        await self.check_models(request)
        result = await self.retriever.search(collections, retrieval_query(request.turns()), options)
        return {"total_results": len(result.hits), "timings_ms": result.timings_ms, "results": [
            {"document_id": str(h.chunk_id), "document_name": h.chunk.source, "collection_name": h.collection_name,
             "content": h.chunk.text, "score": h.score,
             "metadata": {"page": h.chunk.page, "chunk_index": h.chunk.index, "title": h.chunk.title,
                          "dense_rank": h.dense_rank, "lexical_rank": h.lexical_rank}}
            for h in result.hits]}

    async def llm_params(self, request: GenerateRequest) -> dict:
        """The LLM call's parameters: the request's, the settings' where it says nothing."""
        s = self.settings
        params = {"max_tokens": request.max_tokens or s.max_tokens,
                  "temperature": s.temperature if request.temperature is None else request.temperature}
        if request.top_p:
            params["top_p"] = request.top_p
        if request.stop:
            params["stop"] = request.stop
        if request.model not in (None, PIPELINE_MODEL):
            params["model"] = await self.clients.llm_model_for(request.model, PIPELINE_MODEL)
        return params

    async def answer(self, request: GenerateRequest):
        """Answer events for a request: with the knowledge base, or the LLM alone when it is turned off; through
        the request's guardrails policy unless turned off."""
        turns = [m.turn() for m in request.messages]
        # What the request itself names is checked first (no service called), then what the services serve.
        request.guardrails_choice()  # conflicting guardrails fields: a 400 before anything is looked up
        collections = await self.collections_for(request) if request.use_knowledge_base else None
        options = self.search_options(request) if collections else None
        policy = await self.policy_for(request)
        params = await self.llm_params(request)
        await self.check_models(request)
        verdict = policy.verdict() if policy else None
        if policy:
            await policy.check_input(turns[-1]["content"], verdict)
            if verdict.blocked_by:
                return self._observed(refusal(verdict))
        if collections is None:
            return self._observed(self._plain_answer(turns, params, policy, verdict))
        return self._observed(self.answerer.answer(collections, turns, options, params, policy, verdict))

    async def policy_for(self, request: GenerateRequest) -> PolicyRuntime | None:
        """The request's guardrails policy, or None when guardrails are off (for the request, or the server: a
        request asking for them on a server that turned them off is refused rather than answered unguarded)."""
        wanted = request.guardrails_choice()
        if wanted is False:
            return None
        if not self.settings.guardrails_enabled:
            if wanted or request.guardrails.config_id:
                raise InvalidRequestError("Guardrails are turned off on this server "
                                          "(NIMRAG_PIPELINE_GUARDRAILS_ENABLED=false).", param="enable_guardrails",
                                          code="guardrails_disabled")
            return None
        policy_id = request.guardrails.config_id or self.settings.guardrails_default_policy
        with api_errors():
            try:
                return await self.guardrails.policy(policy_id)
            except PolicyError as exc:  # stored before a platform change made it invalid: say so, do not 500
                raise DependencyError("guardrails", f"policy '{policy_id}' cannot run: {exc}") from None

    async def _observed(self, events):
        cited = 0
        async for event in events:
            if event.kind == "citations":
                cited = len(event.citations)
            elif event.kind == "done":
                self.metrics.observe_answer(event.metrics or {}, cited)
                if event.guardrails:
                    self.metrics.observe_guardrails(event.guardrails)
            yield event

    async def _plain_answer(self, turns, params, policy, verdict):
        yield AnswerEvent("citations", citations=[])
        async for event in generate(self.clients, turns, params, turns, time.perf_counter(), {}, policy, verdict):
            yield event


def collection_view(info: CollectionInfo) -> dict:
    """A collection as ``GET /v1/collections`` lists it (the index type under its API name, index_kind)."""
    return {"name": info.name, "dimension": info.dimension, "index_kind": info.options.index,
            "documents": info.documents, "chunks": info.chunks, "created": info.created, "metadata": info.metadata}


async def refusal(verdict: Verdict):
    """The answer of a request an input rail blocked: the policy's refusal, no LLM call."""
    yield AnswerEvent("citations", citations=[])
    yield AnswerEvent("delta", text=verdict.refusal or "")
    yield AnswerEvent("done", finish_reason="content_filter", metrics=dict(verdict.timings_ms),
                      usage={"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                      guardrails=verdict.as_dict())
