"""quotas.dispatch_weight: an admin's override of the tenant's share of the worker slots

Revision ID: 0006_dispatch_weight
Revises: 0005_quotas

NULL follows the plan's weight (free 1, pro 2, enterprise 4); see
docs/adr/0001-queue-topology.md.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_dispatch_weight"
down_revision: str | None = "0005_quotas"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN (nullable, no default) needs no table rebuild on SQLite either.
    op.add_column("quotas", sa.Column("dispatch_weight", sa.Integer(), nullable=True))


def downgrade() -> None:
    # Not batch mode, as in 0003: SQLite's table rebuild trips foreign keys once usage
    # records exist. SQLite has had ALTER TABLE ... DROP COLUMN since 3.35.
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE quotas DROP COLUMN dispatch_weight")
    else:
        op.drop_column("quotas", "dispatch_weight")
