"""JSON log lines carry the request, tenant, job and task they were written for."""

from __future__ import annotations

import io
import json
import logging

import pytest

from celeriac.platform.logging import JsonLinesFormatter, configure_logging, log_context


@pytest.fixture
def captured() -> io.StringIO:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLinesFormatter())
    logger = logging.getLogger("celeriac.test")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return stream


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_line_has_timestamp_level_logger_message_and_context(captured: io.StringIO) -> None:
    logger = logging.getLogger("celeriac.test")
    with log_context(request_id="r1", tenant_id="t1"), log_context(job_id="j1", task_id=None):
        logger.info("job %s accepted", "j1", extra={"records": 3})
    logger.warning("outside")

    inside, outside = _lines(captured)
    assert inside["message"] == "job j1 accepted"
    assert inside["level"] == "INFO"
    assert inside["logger"] == "celeriac.test"
    assert str(inside["timestamp"]).endswith("+00:00")
    assert (inside["request_id"], inside["tenant_id"], inside["job_id"]) == ("r1", "t1", "j1")
    assert "task_id" not in inside
    assert inside["records"] == 3
    assert "request_id" not in outside


def test_exceptions_stay_on_one_line(captured: io.StringIO) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("celeriac.test").exception("failed")
    (line,) = _lines(captured)
    assert "RuntimeError: boom" in str(line["exc_info"])


@pytest.mark.parametrize(("level", "shown"), [("INFO", False), ("DEBUG", True)])
def test_beats_housekeeping_lines_are_debug(
    capfd: pytest.CaptureFixture[str], level: str, shown: bool
) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(level)
        beat = logging.getLogger("celery.beat")
        beat.info("Scheduler: Sending due task %s (%s)", "release", "celeriac.x.release")
        beat.info("beat: Starting...")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines()]
    messages = {line["message"]: line["level"] for line in lines}
    assert messages.get("beat: Starting...") == "INFO"
    assert ("Scheduler: Sending due task release (celeriac.x.release)" in messages) is shown
    if shown:
        assert messages["Scheduler: Sending due task release (celeriac.x.release)"] == "DEBUG"
