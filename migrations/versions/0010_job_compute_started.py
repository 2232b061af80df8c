"""jobs.compute_started_at: when a job's first compute task was claimed

Revision ID: 0010_job_compute_started
Revises: 0009_console_sessions

The end of the job's queue wait (``celeriac_job_queue_wait_seconds``, issue 14): set once
by the first compute task's claim, with a compare-and-set, so that a redelivered task or a
sibling claimed at the same moment does not count the wait again.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_job_compute_started"
down_revision: str | None = "0009_console_sessions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("compute_started_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("compute_started_at")
