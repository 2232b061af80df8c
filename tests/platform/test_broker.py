"""The embedded broker (kombu's filesystem transport) never hands a consumer a message
file that is still being written: kombu's own transport did, and the worker that read the
empty file died ("Unrecoverable error: JSONDecodeError"), taking `celeriac up` down."""

from __future__ import annotations

import threading
from pathlib import Path
from queue import Empty
from typing import Any

from kombu import Connection
from kombu.transport import filesystem, get_transport_cls

from celeriac.platform.broker import AtomicFilesystemTransport

MESSAGES = 150
BODY = "x" * 400_000  # large enough that a write takes a while, as on a loaded machine


def _options(folder: Path) -> dict[str, Any]:
    for sub in ("queue", "processed"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "processed_folder": str(folder / "processed"),
        "store_processed": False,
    }


def _race(transport: type, folder: Path) -> tuple[list[int], list[BaseException]]:
    """A producer and a consumer on one queue; what the consumer read and what it hit."""
    received: list[int] = []
    errors: list[BaseException] = []
    done = threading.Event()
    with (
        Connection(
            "filesystem://", transport=transport, transport_options=_options(folder)
        ) as producer_conn,
        Connection(
            "filesystem://", transport=transport, transport_options=_options(folder)
        ) as consumer_conn,
    ):
        producer, consumer = producer_conn.default_channel, consumer_conn.default_channel

        def consume() -> None:
            while len(received) < MESSAGES and not (done.is_set() and errors):
                try:
                    received.append(consumer._get("q")["n"])
                except Empty:
                    if done.is_set() and len(received) < MESSAGES and not errors:
                        continue
                except Exception as exc:  # what killed the worker
                    errors.append(exc)
                    if len(errors) > 3:
                        return

        thread = threading.Thread(target=consume)
        thread.start()
        for n in range(MESSAGES):
            producer._put("q", {"n": n, "body": BODY})
        done.set()
        thread.join(timeout=120)
    return received, errors


def test_messages_appear_only_when_written_whole(tmp_path: Path) -> None:
    received, errors = _race(AtomicFilesystemTransport, tmp_path / "atomic")
    assert errors == []
    assert sorted(received) == list(range(MESSAGES))


def test_filesystem_urls_use_the_atomic_transport() -> None:
    assert get_transport_cls("filesystem") is AtomicFilesystemTransport
    assert issubclass(AtomicFilesystemTransport, filesystem.Transport)
