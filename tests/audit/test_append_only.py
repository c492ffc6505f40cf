"""The database itself keeps the audit trail append-only.

On both backends triggers refuse UPDATE and DELETE through the app's own connection (whatever
its role). On PostgreSQL a statement trigger refuses TRUNCATE, and the migration revoked UPDATE,
DELETE and TRUNCATE from PUBLIC and from the owner, so an application role that is not the owner
can't remove the triggers either. Only the owner or a superuser could disable them, which is the
attack tests/audit/test_tamper.py shows the hash chain catching.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import Session

from app.audit import service as audit

TAMPERING = {
    "update": "UPDATE audit_records SET actor = 'mallory'",
    "delete": "DELETE FROM audit_records",
    "truncate": "TRUNCATE audit_records",
}


def append(session: Session) -> None:
    audit.record(session, action="thing.happened", subject_type="t", subject_id="1", actor="test")
    session.commit()


@pytest.mark.parametrize("verb", ["update", "delete"])
def test_the_apps_connection_cannot_update_or_delete(session: Session, verb: str) -> None:
    append(session)
    with pytest.raises(DatabaseError, match="append-only"), session.begin_nested():
        session.execute(text(TAMPERING[verb]))
    assert session.scalar(text("SELECT count(*) FROM audit_records WHERE actor = 'test'")) == 1


@pytest.fixture
def postgresql(backend: str) -> None:
    if backend != "postgresql":
        pytest.skip("roles, privileges and TRUNCATE are PostgreSQL's")


def test_truncate_is_refused(postgresql: None, session: Session) -> None:
    append(session)
    with pytest.raises(DatabaseError, match="append-only"), session.begin_nested():
        session.execute(text(TAMPERING["truncate"]))


def table_privileges(connection: Connection, grantee: str) -> set[str]:
    """What ``grantee`` (a role name, or PUBLIC) holds on audit_records, from its ACL."""
    rows = connection.execute(
        text(
            "SELECT a.privilege_type, coalesce(r.rolname, 'PUBLIC') "
            "FROM pg_class c, aclexplode(c.relacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee "
            "WHERE c.relname = 'audit_records'"
        )
    )
    return {privilege for privilege, role in rows if role == grantee}


def test_the_migration_revoked_update_delete_and_truncate(
    postgresql: None, connection: Connection
) -> None:
    owner = connection.scalar(
        text("SELECT tableowner FROM pg_tables WHERE tablename = 'audit_records'")
    )
    assert owner is not None
    held = table_privileges(connection, owner)
    assert {"SELECT", "INSERT"} <= held
    assert not held & {"UPDATE", "DELETE", "TRUNCATE"}
    assert not table_privileges(connection, "PUBLIC") & {"UPDATE", "DELETE", "TRUNCATE"}


def create_role(connection: Connection) -> str:
    """A role that vanishes with the test's transaction."""
    role = f"safepatch_test_{uuid.uuid4().hex[:8]}"
    connection.exec_driver_sql(f'CREATE ROLE "{role}" NOLOGIN')
    connection.exec_driver_sql(f'GRANT USAGE ON SCHEMA public TO "{role}"')
    return role


@pytest.fixture
def app_role(postgresql: None, connection: Connection) -> Iterator[str]:
    """A role like the application's should be: not the owner, even if granted everything."""
    role = create_role(connection)
    connection.exec_driver_sql(f'GRANT ALL ON audit_records TO "{role}"')
    yield role
    connection.exec_driver_sql("RESET ROLE")


def test_an_app_role_with_every_grant_still_cannot_tamper(
    app_role: str, connection: Connection, session: Session
) -> None:
    append(session)
    connection.exec_driver_sql(f'SET ROLE "{app_role}"')
    for statement in TAMPERING.values():
        with pytest.raises(DatabaseError, match="append-only"), connection.begin_nested():
            connection.exec_driver_sql(statement)
    for statement in (
        "ALTER TABLE audit_records DISABLE TRIGGER USER",
        "DROP TRIGGER audit_records_append_only ON audit_records",
    ):
        with pytest.raises(DatabaseError, match="must be owner"), connection.begin_nested():
            connection.exec_driver_sql(statement)
    # ... and it can still append and read.
    audit.record(session, action="x", subject_type="t", subject_id="2", actor="app")
    session.flush()
    assert audit.verify_chain(session).checked == 2


def test_a_non_superuser_owner_has_lost_the_privileges(
    postgresql: None, connection: Connection, session: Session
) -> None:
    # The owner keeps the ACL the migration left (no UPDATE, DELETE, TRUNCATE); it could grant
    # them back or disable the triggers, which is why the app should not run as the owner.
    append(session)
    owner = create_role(connection)
    connection.exec_driver_sql(f'ALTER TABLE audit_records OWNER TO "{owner}"')
    connection.exec_driver_sql(f'SET ROLE "{owner}"')
    try:
        for statement in TAMPERING.values():
            with pytest.raises(DatabaseError, match="permission denied"), connection.begin_nested():
                connection.exec_driver_sql(statement)
    finally:
        connection.exec_driver_sql("RESET ROLE")


def test_a_superuser_can_still_disable_the_triggers(
    postgresql: None, connection: Connection, session: Session
) -> None:
    # The attack the hash chain exists for (tests/audit/test_tamper.py).
    append(session)
    is_superuser = connection.scalar(text("SELECT rolsuper FROM pg_roles WHERE rolname = user"))
    assert is_superuser
    connection.exec_driver_sql("ALTER TABLE audit_records DISABLE TRIGGER USER")
    connection.exec_driver_sql("UPDATE audit_records SET actor = 'mallory'")
    session.expire_all()
    assert not audit.verify_chain(session).ok
