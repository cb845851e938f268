"""Guardrails policy editing (``/v1/guardrails/configs``): thin; the work is in nimrag.guardrails.service.

Reading and validating need what every endpoint needs (a normal API key when keys are set); changing a policy
needs the admin key as the Bearer token. The admin key is also accepted as a normal key (see nimrag.pipeline.app).
"""

from __future__ import annotations

import hmac
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Query, Request
from pydantic import Field
from starlette.responses import Response

from nimrag.guardrails.service import InvalidPolicy, PolicyService
from nimrag.services.common.body import json_body_openapi, parse_json_body
from nimrag.services.common.errors import APIError, error_body
from nimrag.services.common.fields import RequestModel

PREFIX = "/v1/guardrails/configs"
MAX_TEXT = 1024

Files = Annotated[dict[str, str], Field(description="File name -> text: config.yml, prompts.yml, *.co.")]


class AdminKeyRequired(APIError):
    status_code = 403
    error_type = "permission_error"


class ValidatePolicy(RequestModel):
    files: Files


class CreatePolicy(RequestModel):
    id: str = Field(max_length=64)
    files: Files
    comment: str = Field("", max_length=MAX_TEXT)
    author: str = Field("", max_length=256)


class UpdatePolicy(RequestModel):
    files: Files
    expected_version: int | None = Field(None, ge=1, description="Refuse (409) if the policy has moved on.")
    comment: str = Field("", max_length=MAX_TEXT)
    author: str = Field("", max_length=256)


class RollbackPolicy(RequestModel):
    version: int = Field(ge=1, description="The version whose files become a new current version.")
    expected_version: int | None = Field(None, ge=1)
    comment: str = Field("", max_length=MAX_TEXT)
    author: str = Field("", max_length=256)


def require_admin(request: Request) -> None:
    admin_key = request.app.state.settings.admin_api_key
    if not admin_key:
        raise AdminKeyRequired("Policy editing is disabled: set NIMRAG_PIPELINE_ADMIN_API_KEY on the pipeline to "
                               "enable it, and send that key as 'Authorization: Bearer <key>'.",
                               code="policy_editing_disabled")
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), admin_key.encode()):
        raise AdminKeyRequired("Changing a policy needs the admin API key: send 'Authorization: Bearer <admin key>'.",
                               code="admin_key_required")


router = APIRouter()
admin = [Depends(require_admin)]


def _policies(request: Request) -> PolicyService:
    return request.app.state.policies


def _json(payload, status_code: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status_code, media_type="application/json")


@router.get(PREFIX)
async def list_policies(request: Request) -> Response:
    return _json(await _policies(request).list())


@router.post(f"{PREFIX}/validate", openapi_extra=json_body_openapi(ValidatePolicy))
async def validate_policy(request: Request) -> Response:
    body = await parse_json_body(request, ValidatePolicy)
    return _json(await _policies(request).validate(body.files))


@router.post(PREFIX, dependencies=admin, openapi_extra=json_body_openapi(CreatePolicy))
async def create_policy(request: Request) -> Response:
    body = await parse_json_body(request, CreatePolicy)
    return _json(await _policies(request).create(body.id, body.files, body.comment, body.author), 201)


@router.get(PREFIX + "/{policy_id}")
async def get_policy(request: Request, policy_id: str, version: Annotated[int | None, Query(ge=1)] = None) -> Response:
    return _json(await _policies(request).get(policy_id, version))


@router.put(PREFIX + "/{policy_id}", dependencies=admin, openapi_extra=json_body_openapi(UpdatePolicy))
async def update_policy(request: Request, policy_id: str) -> Response:
    body = await parse_json_body(request, UpdatePolicy)
    return _json(await _policies(request).update(policy_id, body.files, body.expected_version, body.comment,
                                                 body.author))


@router.delete(PREFIX + "/{policy_id}", dependencies=admin)
async def delete_policy(request: Request, policy_id: str) -> Response:
    return _json(await _policies(request).delete(policy_id))


@router.get(PREFIX + "/{policy_id}/history")
async def policy_history(request: Request, policy_id: str) -> Response:
    return _json(await _policies(request).history(policy_id))


@router.get(PREFIX + "/{policy_id}/diff")
async def policy_diff(request: Request, policy_id: str, from_version: Annotated[int | None, Query(ge=1)] = None,
                      to_version: Annotated[int | None, Query(ge=1)] = None) -> Response:
    return _json(await _policies(request).diff(policy_id, from_version, to_version))


@router.post(PREFIX + "/{policy_id}/rollback", dependencies=admin, openapi_extra=json_body_openapi(RollbackPolicy))
async def rollback_policy(request: Request, policy_id: str) -> Response:
    body = await parse_json_body(request, RollbackPolicy)
    return _json(await _policies(request).rollback(policy_id, body.version, body.expected_version, body.comment,
                                                   body.author))


def install_policy_error_handler(app) -> None:
    """An invalid policy answers the one error shape plus ``error.problems``, the list the message spells out."""

    @app.exception_handler(InvalidPolicy)
    async def _invalid_policy(_: Request, exc: InvalidPolicy) -> Response:
        body = orjson.loads(error_body(exc))
        body["error"]["problems"] = exc.problems
        return _json(body, exc.status_code)
