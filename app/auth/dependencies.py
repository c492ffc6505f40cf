from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.auth import service
from app.auth.context import AdminContext, AuthContext
from app.core import ratelimit
from app.core.dependencies import SessionDep, SettingsDep
from app.core.errors import AuthenticationFailed

MISSING_KEY_MESSAGE = (
    "You didn't provide an API key. Provide it in an Authorization header using Bearer auth "
    "(Authorization: Bearer sp-...)."
)


def _bearer_token(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed(MISSING_KEY_MESSAGE, code="missing_api_key")
    return token


def _client_address(request: Request) -> str | None:
    return request.client.host if request.client is not None else None


def check_client_rate(request: Request) -> None:
    """Count the request against its client address's limit, before its key is looked up: a
    client flooding bad keys is refused (429) without a database query."""
    _bearer_token(request)  # no key at all: the 401 at once, which costs nothing to answer
    address = _client_address(request) or "unknown"
    ratelimit.check(
        request.app.state.client_rate_limiter,
        address,
        who=f"your address ({address}) before authentication",
    )


def get_auth(request: Request, session: SessionDep) -> AuthContext:
    """Authenticate ``Authorization: Bearer sp-...``, counting the request against its client
    address's limit first and its tenant's limit after."""
    check_client_rate(request)
    auth = service.authenticate(
        session,
        token=_bearer_token(request),
        refused=request.app.state.refused_keys,
        client=_client_address(request),
    )
    # Counted per tenant, after authentication: a refused key costs no tenant its budget.
    ratelimit.check(request.app.state.rate_limiter, auth.tenant.id)
    return auth


def get_admin(request: Request, settings: SettingsDep) -> AdminContext:
    """Authenticate the operator's ``Authorization: Bearer spa-...`` (after the per-address
    limit, as for tenants' keys)."""
    check_client_rate(request)
    return service.authenticate_admin(
        _bearer_token(request), admin_key_sha256=settings.admin_key_sha256
    )


AuthDep = Annotated[AuthContext, Depends(get_auth)]
AdminDep = Annotated[AdminContext, Depends(get_admin)]
