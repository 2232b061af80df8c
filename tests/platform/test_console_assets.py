"""The vendored browser assets are the ones web/package-lock.json pins (``make vendor``
copies them; nobody edits them by hand), and pages reference only files that exist."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
WEB = REPO / "web"
VENDOR = REPO / "platform" / "console" / "static" / "vendor"
TEMPLATES = REPO / "platform" / "console" / "templates"


def test_vendored_files_match_the_lock_file() -> None:
    lock = json.loads((WEB / "package-lock.json").read_text())["packages"]
    manifest = json.loads((VENDOR / "MANIFEST.json").read_text())
    declared = json.loads((WEB / "package.json").read_text())
    pinned = {**declared["dependencies"], **declared["devDependencies"]}
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", v) for v in pinned.values()), pinned
    assert {entry["package"] for entry in manifest.values()} == set(pinned)
    for path, entry in manifest.items():
        assert (
            entry["version"]
            == lock[f"node_modules/{entry['package']}"]["version"]
            == (pinned[entry["package"]])
        ), path
        digest = hashlib.sha256((REPO / path).read_bytes()).hexdigest()
        assert digest == entry["sha256"], f"{path} differs from what make vendor copied"


def test_templates_reference_existing_static_files() -> None:
    referenced = set()
    for template in TEMPLATES.rglob("*.html"):
        referenced |= set(re.findall(r"static\('([^']+)'\)", template.read_text()))
    assert "vendor/htmx.min.js" in referenced
    for path in referenced:
        assert (REPO / "platform" / "console" / "static" / path).is_file(), path
