"""The plugin registry as published by the compute workers that can run the plugins.

The API validates pipelines against this table and never imports plugin code: a plugin
exists for the platform once a compute worker that has it installed has started.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import String, Text, false
from sqlalchemy.orm import Mapped, mapped_column

from celeriac.platform.models.base import Base, JSONType, utcnow


class Plugin(Base):
    __tablename__ = "plugins"

    # "dataset" or "analyzer"
    kind: Mapped[str] = mapped_column(String(20), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    version: Mapped[str] = mapped_column(String(40))
    description: Mapped[str] = mapped_column(Text, default="")
    # JSON Schema of the plugin's parameters.
    parameters_schema: Mapped[dict[str, Any]] = mapped_column(JSONType)
    # Datasets: the dataset kind produced. Analyzers: None.
    produces: Mapped[str | None] = mapped_column(String(40))
    # Analyzers: the dataset kinds accepted. Datasets: [].
    accepts: Mapped[list[str]] = mapped_column(JSONType, default=list)
    # Analyzers: whether the canvas may run it on slices of a dataset's rows and merge the
    # results (ADR 0009). Datasets: False.
    rowwise: Mapped[bool] = mapped_column(default=False, server_default=false())
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)
