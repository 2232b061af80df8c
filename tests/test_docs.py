"""The operator docs name code that exists: every ``celeriac.…`` name cited in
``docs/job-lifecycle.md`` resolves to a module or an attribute of one."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CITED = re.compile(r"`(celeriac\.[a-z_.]+[A-Za-z_]*)`")


def _cited(doc: str) -> list[str]:
    return sorted(set(CITED.findall((REPO / doc).read_text())))


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for name in parts[split:]:
            if not hasattr(target, name):
                return False
            target = getattr(target, name)
        return True
    return False


@pytest.mark.parametrize("doc", ["docs/job-lifecycle.md"])
def test_every_cited_name_exists(doc: str) -> None:
    cited = _cited(doc)
    assert len(cited) > 20
    assert [name for name in cited if not _resolves(name)] == []
