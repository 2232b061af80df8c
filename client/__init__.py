"""Celeriac's Python SDK (``celeriac.client``, the ``celeriac-client`` distribution).

>>> from celeriac.client import Client
>>> with Client(base_url="http://localhost:8000", api_key="ck_live_...") as client:
...     job = client.jobs.submit(records=[{"id": 1, "amount": 9.5}], pipeline="tabular-summary")
...     job.wait(progress=True).results(as_frame=True)

:class:`AsyncClient` has the same calls, awaited. It depends on httpx and pydantic only;
``celeriac-client[pandas]`` adds DataFrames, ``celeriac-client[progress]`` rich's bars.
``celeriac.client.webhooks.verify`` checks webhook signatures on the receiving side.
"""

from celeriac.client._async import AsyncClient, AsyncJob
from celeriac.client._core import RetryPolicy
from celeriac.client._sync import Client, Job
from celeriac.client.errors import (
    APIError,
    AuthenticationFailed,
    BadRequest,
    CeleriacError,
    Conflict,
    ConnectionFailed,
    Gone,
    JobTimeout,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    ValidationFailed,
)
from celeriac.client.models import FINAL_STATES, JobEvent, JobState, Priority

__all__ = [
    "FINAL_STATES",
    "APIError",
    "AsyncClient",
    "AsyncJob",
    "AuthenticationFailed",
    "BadRequest",
    "CeleriacError",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Gone",
    "Job",
    "JobEvent",
    "JobState",
    "JobTimeout",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "Priority",
    "RateLimited",
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailable",
    "ValidationFailed",
]
