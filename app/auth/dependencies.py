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


def get_auth(request: Request, session: SessionDep) -> AuthContext:
    """Authenticate ``Authorization: Bearer sp-...`` and count the request against the
    tenant's rate limit."""
    client = request.client.host if request.client is not None else None
    auth = service.authenticate(session, token=_bearer_token(request), client=client)
    # Counted per tenant, after authentication: a refused key costs no tenant its budget.
    ratelimit.check(request.app.state.rate_limiter, auth.tenant.id)
    return auth


def get_admin(request: Request, settings: SettingsDep) -> AdminContext:
    """Authenticate the operator's ``Authorization: Bearer spa-...``."""
    return service.authenticate_admin(
        _bearer_token(request), admin_key_sha256=settings.admin_key_sha256
    )


AuthDep = Annotated[AuthContext, Depends(get_auth)]
AdminDep = Annotated[AdminContext, Depends(get_admin)]
