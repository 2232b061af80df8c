"""plugin registry and idempotency scopes

Revision ID: 0002
Revises: 0001

idempotency_keys is rebuilt rather than altered: it changes primary key (to a surrogate
id with a unique (principal, route, key)) and holds only replayable answers, which a
client can re-create by retrying.
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# JSONB on PostgreSQL, JSON text on SQLite (as celeriac.platform.models.base.JSONType).
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
STATE = sa.Enum(
    "in_flight", "completed", name="idempotency_state", native_enum=False, create_constraint=True
)

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _idempotency_columns(*, scoped_by_principal: bool) -> list[Any]:
    common: list[Any] = [
        sa.Column("route", sa.String(length=200), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_digest", sa.String(length=64), nullable=False),
        sa.Column("state", STATE, nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("response_headers", JSON, nullable=True),
        sa.Column("response_body", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    ]
    if scoped_by_principal:
        return [
            sa.Column("id", sa.Uuid(), nullable=False),
            sa.Column("principal", sa.String(length=250), nullable=False),
            sa.Column("tenant_id", sa.Uuid(), nullable=True),
            *common,
            sa.ForeignKeyConstraint(
                ["tenant_id"],
                ["tenants.id"],
                name=op.f("fk_idempotency_keys_tenant_id_tenants"),
                ondelete="CASCADE",
            ),
            sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_keys")),
            sa.UniqueConstraint(
                "principal", "route", "key", name=op.f("uq_idempotency_keys_principal_route_key")
            ),
        ]
    return [
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        *common,
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_idempotency_keys_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "route", "key", name=op.f("pk_idempotency_keys")),
    ]


def upgrade() -> None:
    op.create_table(
        "plugins",
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("version", sa.String(length=40), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("parameters_schema", JSON, nullable=False),
        sa.Column("produces", sa.String(length=40), nullable=True),
        sa.Column("accepts", JSON, nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kind", "name", name=op.f("pk_plugins")),
    )
    op.drop_index(op.f("ix_idempotency_keys_expires_at"), table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.create_table("idempotency_keys", *_idempotency_columns(scoped_by_principal=True))
    op.create_index(op.f("ix_idempotency_keys_expires_at"), "idempotency_keys", ["expires_at"])
    op.create_index(
        op.f("ix_idempotency_keys_tenant_id_created_at"),
        "idempotency_keys",
        ["tenant_id", "created_at"],
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_idempotency_keys_tenant_id_created_at"), table_name="idempotency_keys")
    op.drop_index(op.f("ix_idempotency_keys_expires_at"), table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.create_table("idempotency_keys", *_idempotency_columns(scoped_by_principal=False))
    op.create_index(op.f("ix_idempotency_keys_expires_at"), "idempotency_keys", ["expires_at"])
    op.drop_table("plugins")
