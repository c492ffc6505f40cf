"""Who is calling: a tenant's API key or the operator's admin key.

Its own module because both the key checks (``app.auth.service``) and the audit trail
(``app.audit.service``), which the key checks write to, need it.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.db.models import APIKey, Tenant


@dataclass(frozen=True)
class AuthContext:
    """The authenticated caller: every query is scoped to ``tenant``."""

    tenant: Tenant
    api_key: APIKey

    @property
    def actor(self) -> str:
        """How the audit trail names this caller."""
        return f"api_key:{self.api_key.id}"


@dataclass(frozen=True)
class AdminContext:
    """The operator, authenticated with the admin key."""

    @property
    def actor(self) -> str:
        return "admin"
