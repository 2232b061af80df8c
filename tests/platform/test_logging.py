"""JSON log lines carry the request, tenant, job and task they were written for."""

from __future__ import annotations

import io
import json
import logging

import pytest

from celeriac.platform.logging import JsonLinesFormatter, log_context


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
    assert inside["level"] == "INFO" and inside["logger"] == "celeriac.test"
    assert str(inside["timestamp"]).endswith("+00:00")
    assert (inside["request_id"], inside["tenant_id"], inside["job_id"]) == ("r1", "t1", "j1")
    assert "task_id" not in inside and inside["records"] == 3
    assert "request_id" not in outside


def test_exceptions_stay_on_one_line(captured: io.StringIO) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("celeriac.test").exception("failed")
    (line,) = _lines(captured)
    assert "RuntimeError: boom" in str(line["exc_info"])
