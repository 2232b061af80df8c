"""tenant key destruction and blob deletion tracked per tenant

Revision ID: 0003_tenant_key_destruction
Revises: 0002

A deleted tenant's KMS key is disabled and scheduled for deletion, then its blobs are
deleted; each step is recorded when done, so beat's sweep retries what failed
(celeriac.platform.tenants.destruction).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_tenant_key_destruction"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("key_destroyed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("blobs_deleted_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # Not batch mode: on SQLite it rebuilds "tenants", and dropping the old table fails its
    # foreign keys as soon as a usage record (append-only) refers to a tenant. SQLite has
    # had ALTER TABLE ... DROP COLUMN since 3.35.
    for column in ("blobs_deleted_at", "key_destroyed_at"):
        if op.get_bind().dialect.name == "sqlite":
            op.execute(f"ALTER TABLE tenants DROP COLUMN {column}")
        else:
            op.drop_column("tenants", column)
