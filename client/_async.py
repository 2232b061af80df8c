"""The asynchronous client (``celeriac.client.AsyncClient``): the same calls as
:class:`celeriac.client.Client`, awaited; listings are async iterators."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from pydantic import BaseModel, PrivateAttr

from celeriac.client import _core
from celeriac.client._core import Attempts, RetryPolicy, operation
from celeriac.client.errors import ConnectionFailed, JobTimeout, error_for
from celeriac.client.models import (
    ApiKey,
    CreatedApiKey,
    JobData,
    JobEvent,
    QuotaStatus,
    UsageRecord,
    UsageSummary,
    WebhookAttempt,
    WebhookMessage,
    WebhookTarget,
    WebhookTargetWithSecret,
)
from celeriac.client.progress import progress_display

if TYPE_CHECKING:
    import pandas as pd

M = TypeVar("M", bound=BaseModel)
DEFAULT_URL = "http://localhost:8000"
# Resource classes have a method named list, which hides the builtin in their bodies.
Ids = list[str]


def _params(**values: Any) -> dict[str, Any]:
    return {
        k: (v.isoformat() if isinstance(v, datetime) else v)
        for k, v in values.items()
        if v is not None
    }


class AsyncClient:
    """The tenant API, synchronously.

    >>> client = Client(base_url="http://localhost:8000", api_key="ck_live_...")
    >>> job = client.jobs.submit(records=[{"id": 1, "amount": 9.5}], pipeline="tabular-summary")
    >>> job.wait(progress=True).state
    <JobState.SUCCEEDED: 'succeeded'>

    ``base_url`` and ``api_key`` default to ``CELERIAC_URL`` and ``CELERIAC_API_KEY``.
    Every POST carries an ``Idempotency-Key`` (one per call, the same on its retries), so a
    retried submission never makes two jobs. 429 and 503 answers are retried as
    ``retry`` allows, honouring ``Retry-After``.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = _core.DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        api_key = api_key or os.environ.get("CELERIAC_API_KEY")
        if not api_key:
            raise ValueError("no API key: pass api_key= or set CELERIAC_API_KEY")
        self.base_url = (base_url or os.environ.get("CELERIAC_URL") or DEFAULT_URL).rstrip("/")
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=_core.auth_headers(api_key),
            timeout=timeout,
            transport=transport,
        )
        self.jobs = Jobs(self)
        self.webhooks = Webhooks(self)
        self.webhook_messages = WebhookMessages(self)
        self.keys = Keys(self)
        self.quotas = Quotas(self)
        self.usage = Usage(self)
        self.metrics = Metrics(self)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: Mapping[str, str] | None = None,
        files: Mapping[str, tuple[str, bytes, str]] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        """One API call with the client's retries; raises :class:`APIError` on an error
        answer."""
        sent = dict(headers or {})
        if method.upper() == "POST":
            sent["Idempotency-Key"] = idempotency_key or _core.new_idempotency_key()
        attempts = Attempts(self.retry)
        while True:
            try:
                response = await self._http.request(
                    method, path, params=params, json=json, data=data, files=files, headers=sent
                )
            except httpx.TransportError as exc:
                # Safe to repeat: reads, and POSTs under their Idempotency-Key.
                delay = attempts.next_delay(None)
                if delay is None:
                    raise ConnectionFailed(f"{method} {self.base_url}{path}: {exc}") from exc
                await asyncio.sleep(delay)
                continue
            if _core.should_retry(response):
                delay = attempts.next_delay(response)
                if delay is not None:
                    await response.aclose()
                    await asyncio.sleep(delay)
                    continue
            if response.is_error:
                raise error_for(response)
            return response

    async def _model(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        return model.model_validate((await self.request(method, path, **kwargs)).json())

    async def _pages(
        self, model: type[M], path: str, params: Mapping[str, Any]
    ) -> AsyncIterator[M]:
        cursor: str | None = None
        while True:
            page = (
                await self.request(
                    "GET", path, params={**params, "cursor": cursor} if cursor else params
                )
            ).json()
            for item in page["data"]:
                yield model.model_validate(item)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def _job(self, data: Mapping[str, Any]) -> AsyncJob:
        job = AsyncJob.model_validate(data)
        job._client = self
        return job

    @asynccontextmanager
    async def _stream(
        self, path: str, headers: Mapping[str, str], timeout: httpx.Timeout
    ) -> AsyncIterator[httpx.Response]:
        async with self._http.stream("GET", path, headers=headers, timeout=timeout) as response:
            if response.is_error:
                await response.aread()
                raise error_for(response)
            yield response


class AsyncJob(JobData):
    """A job, with the calls that act on it. Its fields are the state when it was read;
    :meth:`refresh` reads them again."""

    _client: AsyncClient | None = PrivateAttr(default=None)

    @property
    def client(self) -> AsyncClient:
        if self._client is None:
            raise RuntimeError("this AsyncJob was not read through an AsyncClient")
        return self._client

    async def refresh(self) -> AsyncJob:
        """The job as it is now."""
        return await self.client.jobs.get(self.id)

    async def wait(
        self,
        *,
        timeout: float | None = None,
        progress: bool | Callable[[JobEvent], Any] = False,
    ) -> AsyncJob:
        """Block until the job ends, following its event stream, and return it as it ended
        (``.state`` is final). ``progress=True`` shows a bar per stage; a callable gets
        each :class:`JobEvent`. Raises :class:`JobTimeout` after ``timeout`` seconds."""
        display = progress_display(progress, str(self.id))
        try:
            async for event in self.client.jobs.events(self.id, timeout=timeout):
                if display is not None:
                    display.update(event)
        except JobTimeout as exc:
            raise JobTimeout(str(exc), await self.refresh()) from None
        finally:
            if display is not None:
                display.close()
        return await self.refresh()

    async def results(self, *, as_frame: bool = False) -> dict[str, Any]:
        """The result document; with ``as_frame=True`` its tabular parts are pandas
        DataFrames (needs ``celeriac-client[pandas]``)."""
        return await self.client.jobs.results(self.id, as_frame=as_frame)

    async def cancel(self) -> AsyncJob:
        """Cancel the job (409 once it has ended)."""
        return await self.client.jobs.cancel(self.id)

    async def rerun(
        self, *, pipeline: str | Mapping[str, Any] | None = None, priority: str | None = None
    ) -> AsyncJob:
        """A new job on this job's stored records."""
        return await self.client.jobs.rerun(self.id, pipeline=pipeline, priority=priority)

    async def delete(self) -> None:
        """Delete the job's data (409 while it runs)."""
        await self.client.jobs.delete(self.id)

    def events(self, *, timeout: float | None = None) -> AsyncIterator[JobEvent]:
        """The job's live events, up to its final state."""
        return self.client.jobs.events(self.id, timeout=timeout)


class _Resource:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client


class Jobs(_Resource):
    """``/v1/jobs``."""

    @operation("POST", "/v1/jobs")
    async def submit(
        self,
        records: Iterable[Mapping[str, Any]] | pd.DataFrame | None = None,
        *,
        pipeline: str | Mapping[str, Any],
        file: str | Path | None = None,
        priority: str = "normal",
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> AsyncJob:
        """Submit records (a list of dicts or a pandas DataFrame) or a CSV / NDJSON
        ``file``; the job is accepted (``queued``) when this returns."""
        body = _core.submit_request(
            records, file=file, pipeline=pipeline, priority=priority, metadata=metadata
        )
        accepted = (
            await self._client.request(
                "POST",
                "/v1/jobs",
                json=body.json,
                data=body.data,
                files=body.files,
                idempotency_key=idempotency_key,
            )
        ).json()
        return self._client._job({**accepted, "pipeline": {}})

    @operation("GET", "/v1/jobs/{job_id}")
    async def get(self, job_id: uuid.UUID | str) -> AsyncJob:
        """A job: state, per-stage progress, errors, ``waiting_reason``, ``expires_at``."""
        return self._client._job((await self._client.request("GET", f"/v1/jobs/{job_id}")).json())

    @operation("GET", "/v1/jobs")
    async def list(
        self,
        *,
        state: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[AsyncJob]:
        """Every matching job, newest first, fetching pages as the iteration goes."""
        params = _params(
            state=state, created_after=created_after, created_before=created_before, limit=page_size
        )
        async for job in self._client._pages(AsyncJob, "/v1/jobs", params):
            job._client = self._client
            yield job

    @operation("GET", "/v1/jobs/{job_id}/results")
    async def results(self, job_id: uuid.UUID | str, *, as_frame: bool = False) -> dict[str, Any]:
        """The result document of a finished job (409 while it runs)."""
        document: dict[str, Any] = (
            await self._client.request("GET", f"/v1/jobs/{job_id}/results")
        ).json()
        return _core.as_frames(document) if as_frame else document

    @operation("POST", "/v1/jobs/{job_id}/cancel")
    async def cancel(self, job_id: uuid.UUID | str) -> AsyncJob:
        """Cancel a queued or running job."""
        return self._client._job(
            (await self._client.request("POST", f"/v1/jobs/{job_id}/cancel")).json()
        )

    @operation("POST", "/v1/jobs/{job_id}/rerun")
    async def rerun(
        self,
        job_id: uuid.UUID | str,
        *,
        pipeline: str | Mapping[str, Any] | None = None,
        priority: str | None = None,
        idempotency_key: str | None = None,
    ) -> AsyncJob:
        """A new job on the stored records of ``job_id`` (``rerun_of`` links them)."""
        body = {
            k: v for k, v in {"pipeline": pipeline, "priority": priority}.items() if v is not None
        }
        data = (
            await self._client.request(
                "POST", f"/v1/jobs/{job_id}/rerun", json=body, idempotency_key=idempotency_key
            )
        ).json()
        return self._client._job(data)

    @operation("DELETE", "/v1/jobs/{job_id}")
    async def delete(self, job_id: uuid.UUID | str) -> None:
        """Delete a finished job's records, intermediate data and results."""
        await self._client.request("DELETE", f"/v1/jobs/{job_id}")

    @operation("GET", "/v1/jobs/{job_id}/events")
    async def events(
        self,
        job_id: uuid.UUID | str,
        *,
        timeout: float | None = None,
        last_event_id: str | None = None,
    ) -> AsyncIterator[JobEvent]:
        """The job's events (state changes, stage progress) up to its final state. A
        dropped connection is resumed with ``Last-Event-ID``: nothing is lost or repeated."""
        if last_event_id is not None and _core.is_final_event_id(last_event_id):
            return  # the job's final event was received: nothing follows it
        deadline = None if timeout is None else time.monotonic() + timeout
        attempts = Attempts(self._client.retry)
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise JobTimeout(f"job {job_id} did not end within {timeout} s", None)
            # Reads wait past the server's 15 s heartbeats, and no longer than the deadline.
            read = 45.0 if remaining is None else min(45.0, remaining)
            headers = {"Accept": "text/event-stream"}
            if last_event_id:
                headers["Last-Event-ID"] = last_event_id
            decoder = _core.SSEDecoder()
            try:
                async with self._client._stream(
                    f"/v1/jobs/{job_id}/events", headers, httpx.Timeout(30.0, read=read)
                ) as response:
                    async for line in response.aiter_lines():
                        sse = decoder.feed(line)
                        if sse is None or (sse.event == "message" and not sse.data):
                            continue
                        event = JobEvent.model_validate_json(sse.data)
                        last_event_id = event.id
                        yield event
                        if event.final:
                            return
            except httpx.TransportError as exc:
                if deadline is not None and time.monotonic() >= deadline:
                    raise JobTimeout(f"job {job_id} did not end within {timeout} s", None) from None
                delay = attempts.next_delay(None)
                if delay is None:
                    raise ConnectionFailed(f"the event stream of job {job_id}: {exc}") from exc
                await asyncio.sleep(delay)
                continue
            # The stream ended without a final event (the server restarted): resume.
            await asyncio.sleep(min(1.0, (decoder.retry_ms or 1000) / 1000))


class Webhooks(_Resource):
    """``/v1/webhooks``: the tenant's webhook targets."""

    @operation("POST", "/v1/webhooks")
    async def create(
        self,
        url: str,
        *,
        event_types: Iterable[str] = ("job.*",),
        description: str = "",
        max_deliveries_per_second: float | None = None,
    ) -> WebhookTargetWithSecret:
        """A new target; its signing ``secret`` is shown only in this answer."""
        body = {
            "url": url,
            "event_types": list(event_types),
            "description": description,
            "max_deliveries_per_second": max_deliveries_per_second,
        }
        return await self._client._model(WebhookTargetWithSecret, "POST", "/v1/webhooks", json=body)

    @operation("GET", "/v1/webhooks")
    def list(self, *, page_size: int = 100) -> AsyncIterator[WebhookTarget]:
        """Every target, newest first."""
        return self._client._pages(WebhookTarget, "/v1/webhooks", {"limit": page_size})

    @operation("GET", "/v1/webhooks/{target_id}")
    async def get(self, target_id: uuid.UUID | str) -> WebhookTarget:
        return await self._client._model(WebhookTarget, "GET", f"/v1/webhooks/{target_id}")

    @operation("PATCH", "/v1/webhooks/{target_id}")
    async def update(
        self,
        target_id: uuid.UUID | str,
        *,
        url: str | None = None,
        event_types: Iterable[str] | None = None,
        description: str | None = None,
        max_deliveries_per_second: float | None = None,
    ) -> WebhookTarget:
        """Change the fields given (the others stay)."""
        body = {
            k: v
            for k, v in {
                "url": url,
                "event_types": None if event_types is None else list(event_types),
                "description": description,
                "max_deliveries_per_second": max_deliveries_per_second,
            }.items()
            if v is not None
        }
        return await self._client._model(
            WebhookTarget, "PATCH", f"/v1/webhooks/{target_id}", json=body
        )

    @operation("DELETE", "/v1/webhooks/{target_id}")
    async def delete(self, target_id: uuid.UUID | str) -> None:
        await self._client.request("DELETE", f"/v1/webhooks/{target_id}")

    @operation("POST", "/v1/webhooks/{target_id}/disable")
    async def disable(self, target_id: uuid.UUID | str) -> WebhookTarget:
        return await self._client._model(WebhookTarget, "POST", f"/v1/webhooks/{target_id}/disable")

    @operation("POST", "/v1/webhooks/{target_id}/enable")
    async def enable(self, target_id: uuid.UUID | str) -> WebhookTarget:
        return await self._client._model(WebhookTarget, "POST", f"/v1/webhooks/{target_id}/enable")

    @operation("POST", "/v1/webhooks/{target_id}/rotate-secret")
    async def rotate_secret(
        self,
        target_id: uuid.UUID | str,
        *,
        previous_secret_expires_in_seconds: int | None = None,
    ) -> WebhookTargetWithSecret:
        """A new signing secret; the previous one stays valid for the overlap."""
        body = _params(previous_secret_expires_in_seconds=previous_secret_expires_in_seconds)
        return await self._client._model(
            WebhookTargetWithSecret,
            "POST",
            f"/v1/webhooks/{target_id}/rotate-secret",
            json=body or None,
        )

    @operation("POST", "/v1/webhooks/{target_id}/end-secret-overlap")
    async def end_secret_overlap(self, target_id: uuid.UUID | str) -> WebhookTarget:
        return await self._client._model(
            WebhookTarget, "POST", f"/v1/webhooks/{target_id}/end-secret-overlap"
        )

    @operation("POST", "/v1/webhooks/{target_id}/test")
    async def test(self, target_id: uuid.UUID | str) -> str:
        """Send a ``webhook.test`` event; the id of its message."""
        answer = (await self._client.request("POST", f"/v1/webhooks/{target_id}/test")).json()
        return str(answer["message_id"])

    @operation("GET", "/v1/webhooks/{target_id}/attempts")
    def attempts(
        self,
        target_id: uuid.UUID | str,
        *,
        status_code: int | None = None,
        succeeded: bool | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[WebhookAttempt]:
        """The target's delivery attempts, newest first."""
        params = _params(
            status_code=status_code, succeeded=succeeded, since=since, until=until, limit=page_size
        )
        return self._client._pages(WebhookAttempt, f"/v1/webhooks/{target_id}/attempts", params)

    @operation("POST", "/v1/webhooks/{target_id}/recover")
    async def recover(self, target_id: uuid.UUID | str, *, since: datetime) -> Ids:
        """Deliver again every failed message since ``since``; the ids of the restarted
        deliveries."""
        answer = (
            await self._client.request(
                "POST", f"/v1/webhooks/{target_id}/recover", json={"since": since.isoformat()}
            )
        ).json()
        return [str(d["id"]) for d in answer["deliveries"]]


class WebhookMessages(_Resource):
    """``/v1/webhook-messages``: the events sent to the tenant's targets."""

    @operation("GET", "/v1/webhook-messages")
    def list(
        self, *, event_type: str | None = None, page_size: int = 100
    ) -> AsyncIterator[WebhookMessage]:
        params = _params(event_type=event_type, limit=page_size)
        return self._client._pages(WebhookMessage, "/v1/webhook-messages", params)

    @operation("GET", "/v1/webhook-messages/{message_id}")
    async def get(self, message_id: str) -> WebhookMessage:
        return await self._client._model(
            WebhookMessage, "GET", f"/v1/webhook-messages/{message_id}"
        )

    @operation("POST", "/v1/webhook-messages/{message_id}/resend")
    async def resend(self, message_id: str, *, target_id: uuid.UUID | str | None = None) -> Ids:
        """Deliver the message again (to one target, or to all it went to); the ids of
        the restarted deliveries."""
        body = {"target_id": str(target_id)} if target_id else None
        answer = (
            await self._client.request(
                "POST", f"/v1/webhook-messages/{message_id}/resend", json=body
            )
        ).json()
        return [str(d["id"]) for d in answer["deliveries"]]


class Keys(_Resource):
    """``/v1/keys``: the tenant's API keys (scope ``keys:manage``)."""

    @operation("POST", "/v1/keys")
    async def create(
        self,
        *,
        name: str,
        scopes: Iterable[str],
        expires_at: datetime | None = None,
        environment: str | None = None,
    ) -> CreatedApiKey:
        """A new key; its secret (``.key``) is shown only in this answer."""
        body = _params(
            name=name, scopes=list(scopes), expires_at=expires_at, environment=environment
        )
        return await self._client._model(CreatedApiKey, "POST", "/v1/keys", json=body)

    @operation("GET", "/v1/keys")
    def list(self, *, page_size: int = 100) -> AsyncIterator[ApiKey]:
        return self._client._pages(ApiKey, "/v1/keys", {"limit": page_size})

    @operation("GET", "/v1/keys/{key_id}")
    async def get(self, key_id: uuid.UUID | str) -> ApiKey:
        return await self._client._model(ApiKey, "GET", f"/v1/keys/{key_id}")

    @operation("POST", "/v1/keys/{key_id}/revoke")
    async def revoke(self, key_id: uuid.UUID | str) -> ApiKey:
        return await self._client._model(ApiKey, "POST", f"/v1/keys/{key_id}/revoke")

    @operation("POST", "/v1/keys/{key_id}/roll")
    async def roll(
        self, key_id: uuid.UUID | str, *, old_key_expires_in_seconds: int | None = None
    ) -> CreatedApiKey:
        """A replacement key; the old one keeps working for the overlap."""
        body = _params(old_key_expires_in_seconds=old_key_expires_in_seconds)
        return await self._client._model(
            CreatedApiKey, "POST", f"/v1/keys/{key_id}/roll", json=body or None
        )


class Quotas(_Resource):
    """``/v1/quotas``."""

    @operation("GET", "/v1/quotas")
    async def get(self) -> QuotaStatus:
        """The tenant's limits and what it uses of them."""
        return await self._client._model(QuotaStatus, "GET", "/v1/quotas")


class Metrics(_Resource):
    """``/v1/metrics``: the tenant's own Prometheus series (scope ``metrics:read``)."""

    @operation("GET", "/v1/metrics")
    async def prometheus_text(self) -> str:
        """The tenant's series in Prometheus' text format, for its own scraper."""
        answer = await self._client.request("GET", "/v1/metrics")
        return answer.text


class Usage(_Resource):
    """``/v1/usage``: the tenant's own usage records (scope ``usage:read``)."""

    @operation("GET", "/v1/usage/records")
    def records(
        self,
        *,
        metric: str | None = None,
        occurred_after: datetime | None = None,
        occurred_before: datetime | None = None,
        page_size: int = 1000,
    ) -> AsyncIterator[UsageRecord]:
        params = _params(
            metric=metric,
            occurred_after=occurred_after,
            occurred_before=occurred_before,
            limit=page_size,
        )
        return self._client._pages(UsageRecord, "/v1/usage/records", params)

    async def records_csv(
        self,
        *,
        metric: str | None = None,
        occurred_after: datetime | None = None,
        occurred_before: datetime | None = None,
        limit: int = 1000,
    ) -> str:
        """One page of records as CSV (the columns billing's export has)."""
        params = _params(
            metric=metric,
            occurred_after=occurred_after,
            occurred_before=occurred_before,
            limit=limit,
        )
        return (
            await self._client.request(
                "GET", "/v1/usage/records", params=params, headers={"Accept": "text/csv"}
            )
        ).text

    @operation("GET", "/v1/usage/summary")
    async def summary(
        self,
        *,
        granularity: str = "day",
        metric: str | None = None,
        occurred_after: datetime | None = None,
        occurred_before: datetime | None = None,
    ) -> UsageSummary:
        params = _params(
            granularity=granularity,
            metric=metric,
            occurred_after=occurred_after,
            occurred_before=occurred_before,
        )
        return await self._client._model(UsageSummary, "GET", "/v1/usage/summary", params=params)
