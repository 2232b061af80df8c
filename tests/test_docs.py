"""The operator docs name code that exists: every ``celeriac.…`` name cited in
``docs/job-lifecycle.md`` resolves to a module or an attribute of one. Every ADR has its
own number, a status, a date and the sections CONTRIBUTING.md asks for."""

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


ADRS = sorted((REPO / "docs" / "adr").glob("[0-9][0-9][0-9][0-9]-*.md"))


@pytest.mark.parametrize("path", ADRS, ids=[p.name[:4] for p in ADRS])
def test_every_adr_has_status_date_and_the_sections_a_reader_looks_for(path: Path) -> None:
    """CONTRIBUTING.md, "Writing an ADR": title, Status and Date, Context, Options, Decision."""
    text = path.read_text()
    head = text.split("\n## ", 1)[0]
    headings = re.findall(r"^## (.+)$", text, re.MULTILINE)
    assert re.match(rf"# {path.name[:4]}\b", text)  # the title carries the file's number
    assert re.search(r"^Status: \w", head, re.MULTILINE)
    assert re.search(r"^Date: \d{4}-\d{2}", head, re.MULTILINE)
    assert headings[0] == "Context"
    assert any(h.startswith("Options") for h in headings)
    assert any("decision" in h.lower() for h in headings)


def test_adr_numbers_are_unique() -> None:
    numbers = [p.name[:4] for p in ADRS]
    assert len(ADRS) > 10
    assert sorted(set(numbers)) == numbers
