"""Print the vendored files' origin (package, version from package-lock.json) and sha256,
so that tests/platform/test_console_assets.py can tell a hand-edited copy from the lock."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

WEB = Path(__file__).resolve().parent
REPO = WEB.parent
FILES = {
    "platform/console/static/vendor/htmx.min.js": "htmx.org",
    "platform/console/static/vendor/sse.min.js": "htmx-ext-sse",
    "platform/console/static/vendor/uPlot.iife.min.js": "uplot",
    "platform/console/static/vendor/uPlot.min.css": "uplot",
    "platform/console/static/vendor/swagger-ui-bundle.js": "swagger-ui-dist",
    "platform/console/static/vendor/swagger-ui.css": "swagger-ui-dist",
    "tests/browser/vendor/axe.min.js": "axe-core",
}


def main() -> None:
    lock = json.loads((WEB / "package-lock.json").read_text())["packages"]
    manifest = {
        path: {
            "package": package,
            "version": lock[f"node_modules/{package}"]["version"],
            "sha256": hashlib.sha256((REPO / path).read_bytes()).hexdigest(),
        }
        for path, package in FILES.items()
    }
    print(json.dumps(manifest, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
