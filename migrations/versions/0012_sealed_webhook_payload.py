"""webhook_messages.sealed_payload: the payload encrypted under the tenant's key

Revision ID: 0012_sealed_webhook_payload
Revises: 0011_job_data_keys
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0012_sealed_webhook_payload"
down_revision: str | None = "0011_job_data_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    # Messages written before this keep their clear payload (no key provider here to
    # encrypt them); new ones leave payload empty.
    with op.batch_alter_table("webhook_messages") as batch:
        batch.add_column(sa.Column("sealed_payload", sa.LargeBinary(), nullable=True))
        batch.alter_column("payload", existing_type=JSON, nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("webhook_messages") as batch:
        batch.drop_column("sealed_payload")
        batch.alter_column("payload", existing_type=JSON, nullable=False)
