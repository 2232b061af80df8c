"""job_tasks.error_detail: a failed task's error message, encrypted under the tenant's key

Revision ID: 0007_task_error_detail
Revises: 0006_dispatch_weight
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_task_error_detail"
down_revision: str | None = "0006_dispatch_weight"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Errors stored before this keep their clear text in job_tasks.error, as they were.
    op.add_column("job_tasks", sa.Column("error_detail", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job_tasks") as batch:
        batch.drop_column("error_detail")
