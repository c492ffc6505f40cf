"""ORM models and the declarative base; the schema itself is built by Alembic (``migrations/``)."""
