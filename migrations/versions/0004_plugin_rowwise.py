"""plugins.rowwise: analyzers the canvas may run on slices of a dataset's rows

Revision ID: 0004_plugin_rowwise
Revises: 0003_tenant_key_destruction
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_plugin_rowwise"
down_revision: str | None = "0003_tenant_key_destruction"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows written by workers of an earlier version are not row-wise: they are run whole.
    op.add_column(
        "plugins", sa.Column("rowwise", sa.Boolean(), server_default=sa.false(), nullable=False)
    )


def downgrade() -> None:
    with op.batch_alter_table("plugins") as batch:
        batch.drop_column("rowwise")
