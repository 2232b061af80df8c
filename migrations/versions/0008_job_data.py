"""job data: re-runs, deletion of a job's data, retention per plan

Revision ID: 0008_job_data
Revises: 0007_task_error_detail

``jobs.rerun_of`` links a re-run to the job whose stored payload it ran on;
``jobs.data_deleted_at`` marks a job whose blobs were deleted (the row and its usage
records stay); ``quotas.retention_days`` is the admin's override of the plan's retention.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_job_data"
down_revision: str | None = "0007_task_error_detail"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("rerun_of", sa.Uuid(), nullable=True))
        batch.add_column(sa.Column("data_deleted_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_foreign_key(
            op.f("fk_jobs_rerun_of_jobs"), "jobs", ["rerun_of"], ["id"], ondelete="SET NULL"
        )
    op.create_index(
        op.f("ix_jobs_tenant_id_finished_at"), "jobs", ["tenant_id", "finished_at"], unique=False
    )
    with op.batch_alter_table("quotas") as batch:
        batch.add_column(sa.Column("retention_days", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("quotas") as batch:
        batch.drop_column("retention_days")
    op.drop_index(op.f("ix_jobs_tenant_id_finished_at"), table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("fk_jobs_rerun_of_jobs"), type_="foreignkey")
        batch.drop_column("data_deleted_at")
        batch.drop_column("rerun_of")
