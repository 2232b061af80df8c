"""quotas and usage: jobs held for their tenant's running-job limit; usage_records immutable

Revision ID: 0005_quotas
Revises: 0004_plugin_rowwise

The immutability of usage records is enforced by the database, not only by the code that
writes them: a trigger refuses every UPDATE and DELETE of a row (PostgreSQL and SQLite). A
correction is a new record whose ``adjusts_id`` names the original.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_quotas"
down_revision: str | None = "0004_plugin_rowwise"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MESSAGE = (
    "usage_records is append-only: correct a record by inserting an adjustment that "
    "references it (adjusts_id)"
)

PG_FUNCTION = f"""
CREATE FUNCTION celeriac_usage_records_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '{MESSAGE} (% refused)', TG_OP USING ERRCODE = 'integrity_constraint_violation';
END
$$
"""
PG_TRIGGER = """
CREATE TRIGGER usage_records_append_only
BEFORE UPDATE OR DELETE ON usage_records
FOR EACH ROW EXECUTE FUNCTION celeriac_usage_records_append_only()
"""


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("held_since", sa.DateTime(timezone=True), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_FUNCTION)
        op.execute(PG_TRIGGER)
    else:
        for operation in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER usage_records_append_only_{operation.lower()} "
                f"BEFORE {operation} ON usage_records "
                f"BEGIN SELECT RAISE(ABORT, '{MESSAGE} ({operation} refused)'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS usage_records_append_only ON usage_records")
        op.execute("DROP FUNCTION IF EXISTS celeriac_usage_records_append_only()")
    else:
        for operation in ("update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS usage_records_append_only_{operation}")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("held_since")
