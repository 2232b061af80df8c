"""The formatter owns the layout: no file opts out of ``ruff format``."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OPT_OUTS = ("# fmt: skip", "# fmt: off")


def test_no_file_opts_out_of_the_formatter() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for folder in ("platform", "workers", "client", "tests", "bench", "migrations")
        for path in (REPO / folder).rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if line.rstrip().endswith(OPT_OUTS) and path != Path(__file__)
    ]
    assert offenders == []
