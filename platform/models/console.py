"""Web console sessions, for the embedded mode (with Redis configured they live there)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index, String
from sqlalchemy.orm import Mapped, mapped_column

from celeriac.platform.models.base import Base, JSONType


class ConsoleSession(Base):
    __tablename__ = "console_sessions"
    __table_args__ = (Index(None, "expires_at"),)

    # SHA-256 of the cookie's value: a read of this table gives no usable cookie.
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSONType)
    # The earlier of the idle and the absolute deadline; rows past it are dead.
    expires_at: Mapped[datetime]
