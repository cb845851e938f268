"""Policy editing as the API serves it: validate, then write a new version; store errors become API errors."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping

from nimrag.guardrails.runtime import Endpoints
from nimrag.guardrails.store import (
    InvalidPolicyFiles,
    InvalidPolicyId,
    Policy,
    PolicyExists,
    PolicyNotFound,
    PolicyStore,
    ProtectedPolicy,
    ReadOnlyStore,
    VersionConflict,
    VersionInfo,
    VersionNotFound,
    check_policy_id,
)
from nimrag.guardrails.validation import DEFAULT_MAX_POLICY_BYTES, validate_policy
from nimrag.services.common.errors import (
    APIError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    RequestValidationFailed,
)

EndpointsProvider = Callable[[], Awaitable[Endpoints]]


class PolicyMissing(NotFoundError):
    def __init__(self, message: str):
        super().__init__(message, param="id", code="policy_not_found")


class PolicyConflict(ConflictError):
    """The policy exists already, is protected, or another version is current."""


class PoliciesReadOnly(APIError):
    """This replica opened the policy store read-only (NIMRAG_PIPELINE_GUARDRAILS_READ_ONLY)."""

    status_code = 403
    error_type = "permission_error"

    def __init__(self):
        super().__init__("This pipeline replica serves guardrails policies read-only: send changes to the writer "
                         "replica (the one without NIMRAG_PIPELINE_GUARDRAILS_READ_ONLY); this replica serves "
                         "them as soon as they are written.", code="policies_read_only")


class InvalidPolicy(RequestValidationFailed):
    """The policy failed validation (422); the message lists every problem, one per line."""

    def __init__(self, problems: list[str]):
        super().__init__("The policy is invalid:\n" + "\n".join(f"- {p}" for p in problems), param="files")
        self.code = "invalid_policy"
        self.problems = problems


@contextlib.contextmanager
def api_errors() -> Iterator[None]:
    """The store's errors, as the API answers them."""
    try:
        yield
    except (PolicyNotFound, VersionNotFound) as exc:
        raise PolicyMissing(str(exc)) from None
    except InvalidPolicyId as exc:
        raise InvalidRequestError(str(exc), param="id", code="invalid_policy_id") from None
    except InvalidPolicyFiles as exc:
        raise InvalidPolicy([str(exc)]) from None
    except PolicyExists as exc:
        raise PolicyConflict(str(exc), param="id", code="policy_exists") from None
    except VersionConflict as exc:
        raise PolicyConflict(str(exc), param="expected_version", code="version_conflict") from None
    except ProtectedPolicy as exc:
        raise PolicyConflict(str(exc), param="id", code="policy_protected") from None
    except ReadOnlyStore:
        raise PoliciesReadOnly() from None


def version_view(info: VersionInfo) -> dict:
    return info.as_dict()


def policy_view(policy: Policy) -> dict:
    return {"id": policy.id, "version": policy.info.version, "current_version": policy.current_version,
            "files": policy.files, **{k: v for k, v in policy.info.as_dict().items() if k != "version"}}


class PolicyService:
    """Blocking store and validation work runs in threads. Validations run one at a time: each parses the policy
    and builds NeMo's runtime, a CPU burst that should not crowd out answers."""

    def __init__(self, store: PolicyStore, endpoints: EndpointsProvider, allow_python: bool = False,
                 max_policy_bytes: int = DEFAULT_MAX_POLICY_BYTES):
        self.store = store
        self._endpoints = endpoints
        self.allow_python = allow_python
        self.max_policy_bytes = max_policy_bytes
        self._validating = asyncio.Lock()

    # --- reading ------------------------------------------------------------------------------------------------
    async def list(self) -> dict:
        summaries = await asyncio.to_thread(self.store.list)
        configs = [{"id": s.id, "version": s.version, "updated": s.updated, "description": s.description}
                   for s in summaries]
        return {"configs": configs, "total": len(configs)}

    async def get(self, policy_id: str, version: int | None = None) -> dict:
        with api_errors():
            return policy_view(await asyncio.to_thread(self.store.get, policy_id, version))

    async def history(self, policy_id: str) -> dict:
        with api_errors():
            versions = await asyncio.to_thread(self.store.history, policy_id)
        return {"id": policy_id, "current_version": versions[-1].version,
                "versions": [version_view(v) for v in reversed(versions)]}

    async def diff(self, policy_id: str, from_version: int | None, to_version: int | None) -> dict:
        with api_errors():
            diff = await asyncio.to_thread(self.store.diff, policy_id, from_version, to_version)
        return {"id": policy_id, "from_version": diff.from_version, "to_version": diff.to_version, "files": diff.files}

    # --- validating and writing ---------------------------------------------------------------------------------
    async def problems(self, files: Mapping[str, str]) -> list[str]:
        endpoints = await self._endpoints()
        async with self._validating:
            return await asyncio.to_thread(validate_policy, files, endpoints, self.allow_python,
                                           self.max_policy_bytes)

    async def validate(self, files: Mapping[str, str]) -> dict:
        problems = await self.problems(files)
        return {"valid": not problems, "problems": problems}

    async def _require_valid(self, files: Mapping[str, str]) -> None:
        problems = await self.problems(files)
        if problems:
            raise InvalidPolicy(problems)

    async def create(self, policy_id: str, files: Mapping[str, str], comment: str, author: str) -> dict:
        with api_errors():
            self.store.require_writable()  # each change is refused before validating, which needs the models
            check_policy_id(policy_id)  # a bad id is refused before the (slower) validation
            await self._require_valid(files)
            info = await asyncio.to_thread(self.store.create, policy_id, files, comment, author)
        return {"id": policy_id, **version_view(info)}

    async def update(self, policy_id: str, files: Mapping[str, str], expected_version: int | None, comment: str,
                     author: str) -> dict:
        with api_errors():
            self.store.require_writable()
            await asyncio.to_thread(self.store.current_version, policy_id)  # 404 before validating
            await self._require_valid(files)
            info = await asyncio.to_thread(self.store.update, policy_id, files, expected_version, comment, author)
        return {"id": policy_id, **version_view(info)}

    async def rollback(self, policy_id: str, version: int, expected_version: int | None, comment: str,
                       author: str) -> dict:
        """The old version is validated again: the services' models may have changed since it was written."""
        with api_errors():
            self.store.require_writable()
            old = await asyncio.to_thread(self.store.get, policy_id, version)
            await self._require_valid(old.files)
            info = await asyncio.to_thread(self.store.rollback, policy_id, version, expected_version, comment,
                                           author)
        return {"id": policy_id, **version_view(info)}

    async def delete(self, policy_id: str) -> dict:
        with api_errors():
            self.store.require_writable()
            await asyncio.to_thread(self.store.delete, policy_id)
        return {"message": f"Policy '{policy_id}' deleted.", "id": policy_id}
