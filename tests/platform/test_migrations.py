"""Alembic builds exactly the models' schema, on PostgreSQL and on SQLite, and unbuilds it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, delete, insert, inspect, select, update
from sqlalchemy.exc import DBAPIError

from celeriac.platform import migrate
from celeriac.platform.db import create_db_engine
from celeriac.platform.models import Base, Tenant, UsageRecord, utcnow


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Engine]]:
    if request.param == "postgresql":
        url: str = request.getfixturevalue("empty_pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'migrations.db'}"
    engine = create_db_engine(url)
    migrate.downgrade(url, "base")
    yield url, engine
    migrate.downgrade(url, "base")
    engine.dispose()


def _diff(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def test_upgrade_to_head_matches_the_models_and_downgrade_removes_everything(
    empty_db: tuple[str, Engine],
) -> None:
    url, engine = empty_db
    migrate.upgrade(url)
    assert _diff(engine) == []
    assert set(inspect(engine).get_table_names()) >= set(Base.metadata.tables)

    migrate.downgrade(url, "base")
    engine.dispose()
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}


def test_every_tenant_owned_table_has_an_index_leading_with_tenant_id(
    empty_db: tuple[str, Engine],
) -> None:
    url, engine = empty_db
    migrate.upgrade(url)
    inspector = inspect(engine)
    owned = [t for t in Base.metadata.tables.values() if "tenant_id" in t.c]
    assert len(owned) >= 10
    for table in owned:
        leading = [ix["column_names"][0] for ix in inspector.get_indexes(table.name)]
        leading += [uq["column_names"][0] for uq in inspector.get_unique_constraints(table.name)]
        leading += inspector.get_pk_constraint(table.name)["constrained_columns"][:1]
        assert "tenant_id" in leading, f"{table.name} has no index leading with tenant_id"


def test_usage_records_are_append_only_on_both_databases(empty_db: tuple[str, Engine]) -> None:
    url, engine = empty_db
    migrate.upgrade(url)
    tenant_id, now = uuid.uuid4(), utcnow()
    with engine.begin() as conn:
        conn.execute(
            insert(Tenant.__table__).values(
                id=tenant_id,
                slug="append-only",
                name="a",
                status="active",
                plan="free",
                created_at=now,
                updated_at=now,
            )
        )
        conn.execute(
            insert(UsageRecord.__table__).values(
                id="job_1:jobs.submitted",
                tenant_id=tenant_id,
                metric="jobs.submitted",
                quantity=1,
                unit="job",
                occurred_at=now,
                recorded_at=now,
                properties={},
                source="test",
            )
        )
    for statement in (
        update(UsageRecord.__table__).values(quantity=2),
        delete(UsageRecord.__table__),
    ):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(statement)
    with engine.connect() as conn:
        assert conn.execute(select(UsageRecord.__table__.c.quantity)).scalar_one() == 1
