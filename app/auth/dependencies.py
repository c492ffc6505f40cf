from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.auth import service
from app.auth.service import AuthContext
from app.core.dependencies import SessionDep
from app.core.errors import AuthenticationFailed

MISSING_KEY_MESSAGE = (
    "You didn't provide an API key. Provide it in an Authorization header using Bearer auth "
    "(Authorization: Bearer sp-...)."
)


def get_auth(request: Request, session: SessionDep) -> AuthContext:
    """Authenticate ``Authorization: Bearer sp-...``."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed(MISSING_KEY_MESSAGE, code="missing_api_key")
    client = request.client.host if request.client is not None else None
    return service.authenticate(session, token=token, client=client)


AuthDep = Annotated[AuthContext, Depends(get_auth)]
