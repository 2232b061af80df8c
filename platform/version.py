"""The platform's version, as installed.

``pyproject.toml``'s ``version`` is the one place it is written: the installed
distribution's metadata carries it, and ``celeriac --version`` and the OpenAPI document
read it from there (``make install`` reinstalls when ``pyproject.toml`` changes).
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Final

DISTRIBUTION: Final = "celeriac"
VERSION: Final = version(DISTRIBUTION)
