"""Analyzers that misbehave on purpose: a test sees each failure path of the canvas."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import Field

from celeriac.workers.compute.plugin import Analyzer, NoParameters, Parameters

ALL_KINDS = ("table", "text", "timeseries")


class FlakyParameters(Parameters):
    marker: str = Field(description="A file counting the attempts.")
    failures: int = Field(ge=0, description="Attempts that fail before one succeeds.")


class Flaky(Analyzer[FlakyParameters]):
    """Fails with a connection error (transient) ``failures`` times, then succeeds."""

    name = "chaos_flaky"
    version = "0.1.0"
    parameters = FlakyParameters
    accepts = ALL_KINDS

    def analyze(self, dataset: pd.DataFrame, params: FlakyParameters) -> dict[str, Any]:
        marker = Path(params.marker)
        attempts = int(marker.read_text() or 0) + 1 if marker.exists() else 1
        marker.write_text(str(attempts))
        if attempts <= params.failures:
            raise ConnectionError(f"chaos: transient failure {attempts} of {params.failures}")
        return {"attempts": attempts, "rows": len(dataset)}


class SleepParameters(Parameters):
    seconds: float = Field(ge=0, le=600)
    marker: str | None = Field(default=None, description="Touched when the run starts.")


class Sleep(Analyzer[SleepParameters]):
    """Sleeps (a task that is still running when a test kills or cancels it)."""

    name = "chaos_sleep"
    version = "0.1.0"
    parameters = SleepParameters
    accepts = ALL_KINDS

    def analyze(self, dataset: pd.DataFrame, params: SleepParameters) -> dict[str, Any]:
        if params.marker:
            marker = Path(params.marker)
            runs = int(marker.read_text() or 0) + 1 if marker.exists() else 1
            marker.write_text(str(runs))
        deadline = time.monotonic() + params.seconds
        while time.monotonic() < deadline:  # short sleeps: signals are handled promptly
            time.sleep(0.05)
        return {"slept": params.seconds, "rows": len(dataset)}


class Fail(Analyzer[NoParameters]):
    """Always fails with a permanent error."""

    name = "chaos_fail"
    version = "0.1.0"
    parameters = NoParameters
    accepts = ALL_KINDS

    def analyze(self, dataset: pd.DataFrame, params: NoParameters) -> dict[str, Any]:
        raise ValueError("chaos: this analyzer always fails")


class Cast(Analyzer[NoParameters]):
    """Casts the ``text`` column to float, as a careless plugin would: pandas' exception
    quotes the first record's value (``could not convert string to float: '...'``)."""

    name = "chaos_cast"
    version = "0.1.0"
    parameters = NoParameters
    accepts = ALL_KINDS

    def analyze(self, dataset: pd.DataFrame, params: NoParameters) -> dict[str, Any]:
        return {"total": float(dataset["text"].astype(float).sum())}


class Leak(Analyzer[NoParameters]):
    """Fails as pandas does on a bad value: the error message quotes a record's value
    (the Sentry tests check that it never leaves the worker)."""

    name = "chaos_leak"
    version = "0.1.0"
    parameters = NoParameters
    accepts = ("table",)

    def analyze(self, dataset: pd.DataFrame, params: NoParameters) -> dict[str, Any]:
        # ValueError: Unable to parse string "<the record's value>" at position 0
        return {"sum": float(pd.to_numeric(dataset["secret"]).sum())}


flaky = Flaky()
cast = Cast()
leak = Leak()
sleep = Sleep()
fail = Fail()
