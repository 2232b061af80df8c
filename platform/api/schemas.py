"""Schemas shared by every route: pages and problems."""

from __future__ import annotations

import re
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AwareDatetime, BaseModel, BeforeValidator, Field

T = TypeVar("T")

_NUMBER = re.compile(r"^\s*[-+]?[0-9.eE+-]+\s*$")


def _iso_only(value: Any) -> Any:
    # pydantic reads numbers as Unix times; the API documents RFC 3339 strings only.
    if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER.match(value)):
        raise ValueError("use an RFC 3339 timestamp with a time zone, e.g. 2026-01-31T12:00:00Z")
    return value


Timestamp = Annotated[AwareDatetime, BeforeValidator(_iso_only)]


class Page(BaseModel, Generic[T]):
    data: list[T]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page."
    )


class ProblemField(BaseModel):
    pointer: str = Field(description="JSON pointer to the offending input, e.g. #/body/slug")
    detail: str


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    code: str
    request_id: str | None
    errors: list[ProblemField] | None = None
    extra: dict[str, Any] | None = None
