"""Tenant lifecycle."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from celeriac.platform.audit import record_admin_action
from celeriac.platform.models import SLUG_PATTERN, Tenant

_SLUG = re.compile(SLUG_PATTERN)


class InvalidSlug(ValueError):
    pass


class SlugTaken(ValueError):
    pass


def validate_slug(slug: str) -> str:
    if not _SLUG.fullmatch(slug):
        raise InvalidSlug(
            f"slug {slug!r} must be 3 to 40 characters of lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return slug


def create_tenant(
    session: Session, *, slug: str, name: str, plan: str = "free", actor: str = "system"
) -> Tenant:
    validate_slug(slug)
    if session.scalar(select(Tenant.id).where(Tenant.slug == slug)) is not None:
        raise SlugTaken(f"a tenant with slug {slug!r} already exists")
    tenant = Tenant(slug=slug, name=name, plan=plan)
    session.add(tenant)
    session.flush()
    record_admin_action(
        session,
        actor=actor,
        actor_role="admin",
        action="tenant.create",
        target_type="tenant",
        target_id=str(tenant.id),
        tenant_id=tenant.id,
        details={"slug": slug, "plan": plan},
    )
    return tenant


def get_tenant_by_slug(session: Session, slug: str) -> Tenant | None:
    return session.scalar(select(Tenant).where(Tenant.slug == slug))
