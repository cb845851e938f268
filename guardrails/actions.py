"""nimrag's rail actions, registered into every policy's NeMo Guardrails runtime (flows in library/nimrag.co).

They read NeMo's context (``user_message``, ``bot_message``) and answer with a ``RailOutcome``, as NeMo's own
rails do, so the same action serves a whole message and the chunks of a streamed answer (NeMo passes the
streamed case more keywords, which they ignore).
"""

from __future__ import annotations

import functools
import time
from collections import OrderedDict
from contextvars import ContextVar
from typing import Literal

import numpy as np
from nemoguardrails.actions.rail_outcome import RailOutcome
from phonenumbers import SUPPORTED_REGIONS
from pydantic import BaseModel, ConfigDict, Field, field_validator

from nimrag.guardrails.detectors import ATTACK_EXAMPLES, DEFAULT_PHONE_REGIONS, Embed, injection_patterns_in

OUTPUT_PATTERNS = ("persona takeover", "developer mode", "chat template tokens")  # signs the answer was hijacked
PROTECTED_WORDS = 8  # this many consecutive words of a protected text in an answer count as a leak
EMBED_CACHE = 256
# The answer being guarded collects here what each rail's action took (milliseconds, summed over a stream's
# chunks); NeMo runs the actions inside the answer's own task, so they see the answer's dict.
RAIL_MS: ContextVar[dict[str, float] | None] = ContextVar("nimrag_rail_ms", default=None)


def timed(rail: str):
    def wrap(action):
        @functools.wraps(action)
        async def run(*args, **kwargs):
            started = time.perf_counter()
            try:
                return await action(*args, **kwargs)
            finally:
                spent = RAIL_MS.get()
                if spent is not None:
                    spent[rail] = round(spent.get(rail, 0.0) + (time.perf_counter() - started) * 1000, 2)
        return run
    return wrap


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JailbreakSettings(_Strict):
    similarity_threshold: float = Field(0.6, gt=0, le=1)


class TopicSettings(_Strict):
    allowed: list[str] = Field(default_factory=list, max_length=500)
    allowed_threshold: float = Field(0.3, gt=-1, le=1)
    blocked: list[str] = Field(default_factory=list, max_length=500)
    blocked_threshold: float = Field(0.6, gt=-1, le=1)


class RetrievalSettings(_Strict):
    drop_injected_chunks: bool = True


class PolicySettings(_Strict):
    """The ``nimrag:`` section of a policy's config.yml."""

    jailbreak: JailbreakSettings = Field(default_factory=JailbreakSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    mask_sensitive_data: list[Literal["email", "phone", "card_number"]] = Field(default_factory=list)
    # Where national phone numbers ("020 7946 0958") are recognised; international ones (+44 ...) always are.
    # Each region is one more pass of the matcher over every streamed piece.
    phone_regions: list[str] = Field(default_factory=lambda: list(DEFAULT_PHONE_REGIONS), max_length=8)

    @field_validator("phone_regions")
    @classmethod
    def _known_regions(cls, regions: list[str]) -> list[str]:
        unknown = [r for r in regions if r.upper() not in SUPPORTED_REGIONS]
        if unknown:
            raise ValueError(f"{unknown} are not regions libphonenumber knows: use ISO 3166 codes such as US, GB, "
                             "DE, IN")
        return [r.upper() for r in regions]


def word_windows(text: str, size: int) -> set[str]:
    words = text.lower().split()
    return {" ".join(words[i:i + size]) for i in range(max(0, len(words) - size + 1))}


class RailActions:
    """The checks of one policy. ``embed`` is the platform's embedding service (None when a policy is only being
    validated: nothing runs then)."""

    def __init__(self, settings: PolicySettings, embed: Embed | None, protected_texts: list[str]):
        self.settings = settings
        self._embed = embed
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._examples: dict[str, np.ndarray] = {}
        self._protected = set().union(*(word_windows(t, PROTECTED_WORDS) for t in protected_texts))

    def register(self, rails) -> None:
        rails.register_action(self.check_jailbreak, name="nimrag_check_jailbreak")
        rails.register_action(self.check_topic, name="nimrag_check_topic")
        rails.register_action(self.check_output, name="nimrag_check_output")

    @timed("nimrag check jailbreak")
    async def check_jailbreak(self, context: dict | None = None, **_) -> RailOutcome:
        text = (context or {}).get("user_message") or ""
        return await self.jailbreak_outcome(text)

    async def jailbreak_outcome(self, text: str, vector: np.ndarray | None = None) -> RailOutcome:
        """Also used on retrieved chunks (a document can carry an injection as well as a user), with the vector
        the collection stored for them: no embedding call."""
        found = injection_patterns_in(text)
        if found:
            return RailOutcome.block(reason=f"matches the '{found[0]}' pattern")
        score = await self.similarity(text, "attacks", ATTACK_EXAMPLES, vector)
        if score >= self.settings.jailbreak.similarity_threshold:
            return RailOutcome.block(reason=f"close to a known attack (similarity {score:.2f})")
        return RailOutcome.allow()

    @timed("nimrag check topic")
    async def check_topic(self, context: dict | None = None, **_) -> RailOutcome:
        text = (context or {}).get("user_message") or ""
        topics = self.settings.topics
        if topics.blocked:
            score = await self.similarity(text, "blocked", topics.blocked)
            if score >= topics.blocked_threshold:
                return RailOutcome.block(reason=f"a blocked topic (similarity {score:.2f})")
        if topics.allowed:
            score = await self.similarity(text, "allowed", topics.allowed)
            if score < topics.allowed_threshold:
                return RailOutcome.block(reason=f"outside the allowed topics (best similarity {score:.2f})")
        return RailOutcome.allow()

    @timed("nimrag check output")
    async def check_output(self, context: dict | None = None, **_) -> RailOutcome:
        text = (context or {}).get("bot_message") or ""
        hijacked = [name for name in injection_patterns_in(text) if name in OUTPUT_PATTERNS]
        if hijacked:
            return RailOutcome.block(reason=f"the answer shows '{hijacked[0]}'")
        if self._protected & word_windows(text, PROTECTED_WORDS):
            return RailOutcome.block(reason="the answer repeats the assistant's instructions")
        return RailOutcome.allow()

    async def similarity(self, text: str, group: str, examples: list[str], vector: np.ndarray | None = None
                         ) -> float:
        """The best cosine similarity of ``text`` (or its ``vector``) to ``examples`` (embedded once per group)."""
        if group not in self._examples:
            self._examples[group] = await self._vectors(examples)
        vector = await self._vector(text) if vector is None else vector
        return float(np.max(self._examples[group] @ vector))

    async def _vector(self, text: str) -> np.ndarray:
        # The input rails ask for the same message twice (attacks, then topics): embed it once.
        if text not in self._cache:
            self._cache[text] = (await self._vectors([text]))[0]
            while len(self._cache) > EMBED_CACHE:
                self._cache.popitem(last=False)
        return self._cache[text]

    async def _vectors(self, texts: list[str]) -> np.ndarray:
        if self._embed is None:
            raise RuntimeError("this policy was built for validation only: it has no embedding service")
        return await self._embed(texts)
