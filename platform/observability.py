"""Process start-up shared by every Celeriac process: logging and Sentry."""

from __future__ import annotations

import sentry_sdk

from celeriac.platform.logging import configure_logging
from celeriac.platform.settings import Settings


def init_process(settings: Settings, component: str) -> None:
    """Configure JSON logging and, when a DSN is set, Sentry for ``component``."""
    configure_logging(settings.log.level, settings.log.json_lines)
    if settings.sentry_dsn is not None:
        sentry_sdk.init(
            dsn=settings.sentry_dsn.get_secret_value(),
            environment=settings.environment,
            server_name=component,
            send_default_pii=False,
        )
