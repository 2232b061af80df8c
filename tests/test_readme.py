"""The README's shell examples name what exists: the files they read are shipped, the
``celeriac`` they run is the one ``make up`` installs, the tenant they name is the demo's,
the settings they set are settings, and the request bodies they send are ones the API's
models accept. Each of these was wrong once (issue 12: a CSV the repository did not ship,
``set-quotas acme``, a refused adjustment, ``celeriac`` not on PATH). The first job is run
against a live ``celeriac up`` by tests/test_up.py."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from celeriac.platform.cli import DEMO_SLUG
from celeriac.platform.quotas.schemas import QuotaOverrides
from celeriac.platform.settings import load_settings
from celeriac.platform.usage.schemas import AdjustmentCreate

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
# A bare `celeriac` word: not `.venv/bin/celeriac`, `celeriac-client` or `celeriac.client`.
BARE_CELERIAC = re.compile(r"(?<![\w/.-])celeriac(?![\w.-])")


def _shell_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README, flags=re.DOTALL)


def _laptop_blocks() -> list[str]:
    """The blocks run on a laptop beside ``make up`` (the real-services block, which runs
    an installed ``celeriac`` next to PostgreSQL and Redis, is the one that exports a
    database URL)."""
    return [b for b in _shell_blocks() if "CELERIAC_DATABASE_URL" not in b]


def _commands(block: str) -> list[str]:
    """The block's commands: continuation lines joined, comments dropped."""
    joined = block.replace("\\\n", " ")
    lines = [line.split("#", 1)[0] if "'" not in line else line for line in joined.splitlines()]
    return [line.strip() for line in lines if line.strip()]


def _data_after(command: str) -> str:
    """The ``-d`` argument of a curl command, with the README's placeholders filled."""
    words = shlex.split(command, comments=True)
    return words[words.index("-d") + 1].replace("<id>", "0b7c4a80-0000-4000-8000-000000000000")


def test_the_readme_has_the_examples_these_tests_read() -> None:
    commands = [c for b in _laptop_blocks() for c in _commands(b)]
    assert any("set-quotas" in c for c in commands)
    assert any("/v1/admin/usage/adjustments" in c for c in commands)
    assert any("file=@examples/" in c for c in commands)


def test_the_files_the_examples_read_are_shipped() -> None:
    named = {
        path
        for block in _shell_blocks()
        for path in re.findall(r"(?<![\w/])(examples/[\w./-]+)", block)
    }
    assert named >= {"examples/records.csv", "examples/webhook_receiver.py"}
    assert sorted(p for p in named if not (REPO / p).is_file()) == []


def test_the_examples_run_the_celeriac_that_make_up_installs() -> None:
    bare = [
        command
        for block in _laptop_blocks()
        for command in _commands(block)
        if BARE_CELERIAC.search(command.split("localhost")[0])
    ]
    assert bare == []


def test_set_quotas_names_the_demo_tenant() -> None:
    slugs = [s for block in _shell_blocks() for s in re.findall(r"set-quotas (\S+)", block)]
    assert slugs
    assert set(slugs) == {DEMO_SLUG}


def test_the_settings_the_examples_set_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    # The laptop webhook line: `CELERIAC_WEBHOOKS__ALLOW_HTTP=true ... make up`.
    (line,) = [c for b in _laptop_blocks() for c in _commands(b) if "ALLOW_HTTP" in c]
    assignments = [w for w in shlex.split(line) if re.match(r"CELERIAC_\w+=", w)]
    assert len(assignments) == 2
    for assignment in assignments:
        name, value = assignment.split("=", 1)
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.webhooks.allow_http
    assert settings.webhooks.allowed_cidrs == ["127.0.0.0/8"]
    # `CELERIAC_API__PORT=8123 make up`, the README's answer to a taken port.
    assert "CELERIAC_API__PORT=8123 make up" in README
    monkeypatch.setenv("CELERIAC_API__PORT", "8123")
    assert load_settings().api.port == 8123


def test_the_bodies_the_examples_send_are_accepted() -> None:
    commands = [c for b in _laptop_blocks() for c in _commands(b)]
    (adjustment,) = [c for c in commands if "/v1/admin/usage/adjustments" in c]
    AdjustmentCreate.model_validate(json.loads(_data_after(adjustment)))
    (quotas,) = [c for c in commands if "-X PUT" in c and "/quotas" in c]
    QuotaOverrides.model_validate(json.loads(_data_after(quotas)))
