"""per-job data keys: every blob of a job under a key of its own, wrapped on its row

Revision ID: 0011_job_data_keys
Revises: 0010_job_compute_started

``jobs.data_key`` holds the job's data key wrapped under the tenant's key; deleting the
job's data nulls it, which crypto-shreds every copy of the job's blobs (docs/adr/0015).
Existing jobs keep NULL: their blobs stay under the tenant's data key and read as before.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_job_data_keys"
down_revision: str | None = "0010_job_compute_started"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("data_key", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    # Jobs written since the upgrade become unreadable: their blobs need their keys.
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("data_key")
