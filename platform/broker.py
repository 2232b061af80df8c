"""Broker connection options shared by the API (publishing) and the Celery app.

The embedded mode uses kombu's filesystem transport: no server, messages are files under
``var/broker``. It has no visibility timeout, so a worker killed mid-task loses that
message; the reconciler, not the broker, is what guarantees progress (see CELERY_NOTES).
"""

from __future__ import annotations

from typing import Any

from kombu import Connection

from celeriac.platform.settings import Settings


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    if settings.is_embedded_broker:
        folder = settings.broker_dir
        for sub in ("queue", "control", "processed"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            "polling_interval": 0.05,
        }
    return {
        "visibility_timeout": settings.workers.visibility_timeout,
        "socket_connect_timeout": 5,
        "socket_timeout": 30,
        "health_check_interval": 30,
    }


def broker_connection(settings: Settings) -> Connection:
    return Connection(settings.broker_url, transport_options=broker_transport_options(settings))
