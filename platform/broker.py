"""Broker connection options shared by the API (publishing) and the Celery app.

The embedded mode uses kombu's filesystem transport: no server, messages are files under
``var/broker``. It has no visibility timeout, so a worker killed mid-task loses that
message; the reconciler, not the broker, is what guarantees progress (see CELERY_NOTES).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from time import monotonic
from typing import Any

import kombu.transport
from kombu import Connection
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

from celeriac.platform.settings import Settings


class AtomicFilesystemChannel(filesystem.Channel):
    """kombu's filesystem channel, with each message file written whole before it appears.

    kombu opens ``<time>_<uuid>.<queue>.msg`` under its final name and then writes it; a
    consumer listing the folder in between moves and reads an empty file and dies with
    ``JSONDecodeError: Expecting value`` ("Unrecoverable error": the worker exits, and
    ``celeriac up`` stops everything, which a test saw as "connection refused" after the
    banner on a loaded machine). celery/kombu#1551 is open. Here the message is written
    under a name no queue matches, then renamed, which is atomic within a folder.
    """

    # As kombu's filesystem Channel._put (whose stub already differs from its base).
    # ARG002: kombu's Channel._put signature
    def _put(self, queue: str, payload: dict[str, Any], **kwargs: Any) -> None:  # type: ignore[override]  # noqa: ARG002
        filename = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        folder = self.data_folder_out
        fd, partial = tempfile.mkstemp(prefix=".partial-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(str_to_bytes(dumps(payload)))
            os.replace(partial, os.path.join(folder, filename))
        except OSError as exc:
            if os.path.exists(partial):
                os.unlink(partial)
            raise kombu.exceptions.ChannelError(f"cannot add file {filename!r}") from exc


class AtomicFilesystemTransport(filesystem.Transport):
    Channel = AtomicFilesystemChannel


# Every kombu connection made for a filesystem:// URL, the API's and each worker's, in any
# process that loads this module (celeriac.platform.tasks does, for Celery's config).
kombu.transport.TRANSPORT_ALIASES["filesystem"] = f"{__name__}:AtomicFilesystemTransport"


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
