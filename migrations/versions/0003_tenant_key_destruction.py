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
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("blobs_deleted_at")
        batch.drop_column("key_destroyed_at")
