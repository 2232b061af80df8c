"""Every ORM model, in one place so that migrations and workers import one module."""

from celeriac.platform.models.api_key import ApiKey
from celeriac.platform.models.audit import AuditEntry
from celeriac.platform.models.base import Base, utcnow
from celeriac.platform.models.console import ConsoleSession
from celeriac.platform.models.enums import (
    FINAL_JOB_STATES,
    AttemptTrigger,
    DeliveryState,
    IdempotencyState,
    JobStage,
    JobState,
    Priority,
    TargetState,
    TaskState,
    TenantStatus,
)
from celeriac.platform.models.idempotency import IdempotencyKey
from celeriac.platform.models.job import Job, JobTask
from celeriac.platform.models.plugin import Plugin
from celeriac.platform.models.tenant import SLUG_PATTERN, Quota, Tenant
from celeriac.platform.models.usage import UsageRecord
from celeriac.platform.models.webhook import (
    WebhookAttempt,
    WebhookDelivery,
    WebhookMessage,
    WebhookTarget,
)

__all__ = [
    "FINAL_JOB_STATES",
    "SLUG_PATTERN",
    "ApiKey",
    "AttemptTrigger",
    "AuditEntry",
    "Base",
    "ConsoleSession",
    "DeliveryState",
    "IdempotencyKey",
    "IdempotencyState",
    "Job",
    "JobStage",
    "JobState",
    "JobTask",
    "Plugin",
    "Priority",
    "Quota",
    "TargetState",
    "TaskState",
    "Tenant",
    "TenantStatus",
    "UsageRecord",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookMessage",
    "WebhookTarget",
    "utcnow",
]
