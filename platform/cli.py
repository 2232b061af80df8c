"""The ``celeriac`` command: run the platform's processes and administer it.

This is the composition root: it names the Celery app by its import string
(``celeriac.workers.celery_app``) and starts it in its own process, so the control plane
never imports worker code.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Annotated

import typer

from celeriac.platform.queues import Pool
from celeriac.platform.settings import Settings, SettingsError, get_settings

CELERY_APP = "celeriac.workers.celery_app"

cli = typer.Typer(
    help="Celeriac: multi-tenant data-processing workflows on Celery.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
admin = typer.Typer(help="Administer tenants and tokens.", no_args_is_help=True)
cli.add_typer(admin, name="admin")


class CommandError(Exception):
    """A failure the user can act on: printed as one line, exit status 1."""


def _settings() -> Settings:
    return get_settings()


# --- processes ----------------------------------------------------------------------------


@cli.command()
def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply database migrations (Alembic) up to REVISION."""
    from celeriac.platform import migrate as migrations

    _settings()
    migrations.upgrade(revision=revision)
    typer.echo(f"database migrated to {revision}")


@cli.command()
def api(
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port.")] = None,
    workers: Annotated[int, typer.Option(help="Uvicorn worker processes.")] = 1,
) -> None:
    """Run the REST API (FastAPI under uvicorn)."""
    import uvicorn

    from celeriac.platform.observability import init_process

    settings = _settings()
    host = host or settings.api.host
    port = port or settings.api.port
    _ensure_port_free(host, port)
    init_process(settings, "api")
    uvicorn.run(
        "celeriac.platform.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        proxy_headers=True,
    )


def worker_argv(settings: Settings, pool: Pool, concurrency: int | None) -> list[str]:
    """The ``celery worker`` command line for one pool."""
    ws = settings.workers
    argv = [
        sys.executable, "-m", "celery", "-A", CELERY_APP, "worker",
        "--queues", pool.value,
        "--hostname", f"{pool.value}@%h",
        "--without-mingle", "--without-gossip",
    ]  # fmt: skip
    if pool is Pool.COMPUTE:
        argv += [
            "--pool", "prefork",
            "--concurrency", str(concurrency or ws.compute_concurrency),
            "-O", "fair",
            "--prefetch-multiplier", "1",
            "--max-tasks-per-child", str(ws.compute_max_tasks_per_child),
        ]  # fmt: skip
    else:
        default = (
            ws.orchestration_concurrency
            if pool is Pool.ORCHESTRATION
            else ws.distribution_concurrency
        )
        argv += ["--pool", "gevent", "--concurrency", str(concurrency or default)]
    return argv


@cli.command()
def worker(
    pool: Annotated[Pool, typer.Option(help="Which pool this worker serves.")],
    concurrency: Annotated[
        int | None, typer.Option(help="Processes (compute) or greenlets (others).")
    ] = None,
) -> None:
    """Run a Celery worker for one pool: orchestration and distribution on gevent,
    compute on prefork with fair scheduling, prefetch 1 and late acks."""
    os.execv(sys.executable, worker_argv(_settings(), pool, concurrency))


@cli.command()
def beat() -> None:
    """Run Celery beat: the reconciler and other periodic work."""
    settings = _settings()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    schedule = settings.var_dir / "celerybeat-schedule"
    argv = [sys.executable, "-m", "celery", "-A", CELERY_APP, "beat", "--schedule", str(schedule)]
    os.execv(sys.executable, argv)


# --- admin --------------------------------------------------------------------------------


@admin.command("create-tenant")
def create_tenant(
    slug: Annotated[str, typer.Argument(help="3-40 lowercase letters, digits and '-'.")],
    name: Annotated[str | None, typer.Option(help="Display name (defaults to the slug).")] = None,
    plan: Annotated[str, typer.Option(help="Billing plan.")] = "free",
    with_key: Annotated[bool, typer.Option(help="Also issue an API key with every scope.")] = True,
) -> None:
    """Create a tenant and print its id (and a new API key, shown only this once)."""
    from celeriac.platform.db import transaction
    from celeriac.platform.keys.service import create_api_key
    from celeriac.platform.tenants import service as tenants

    settings = _settings()
    try:
        with transaction() as session:
            tenant = tenants.create_tenant(session, slug=slug, name=name or slug, plan=plan)
            issued = (
                create_api_key(
                    session, tenant_id=tenant.id, pepper=settings.api_key_pepper(),
                    name="created by celeriac admin create-tenant", created_by="cli",
                )
                if with_key
                else None
            )  # fmt: skip
    except (tenants.InvalidSlug, tenants.SlugTaken) as exc:
        raise CommandError(str(exc)) from None
    typer.echo(f"tenant_id={tenant.id}")
    if issued is not None:
        typer.echo(f"api_key={issued.plaintext}")


@admin.command("set-quotas")
def set_quotas(
    slug: Annotated[str, typer.Argument(help="The tenant's slug.")],
    limits: Annotated[
        list[str] | None,
        typer.Argument(help="NAME=VALUE overrides, e.g. requests_per_second=100; "
                       "NAME=plan follows the plan. Names not given follow the plan."),
    ] = None,
) -> None:  # fmt: skip
    """Replace a tenant's quota overrides (as PUT /v1/admin/tenants/{id}/quotas; audited)."""
    from pydantic import ValidationError

    from celeriac.platform.db import transaction
    from celeriac.platform.quotas.schemas import QuotaOverrides
    from celeriac.platform.quotas.service import set_quotas as replace_quotas
    from celeriac.platform.tenants import service as tenants

    _settings()
    values: dict[str, str | None] = {}
    for item in limits or []:
        name, _, value = item.partition("=")
        values[name] = None if value == "plan" else value
    try:
        overrides = QuotaOverrides.model_validate(values)
    except ValidationError as exc:
        raise CommandError(f"invalid quotas: {exc.errors()[0]['loc']}: "
                           f"{exc.errors()[0]['msg']}") from None  # fmt: skip
    with transaction() as session:
        tenant = tenants.get_tenant_by_slug(session, slug)
        if tenant is None:
            raise CommandError(f"no tenant with slug {slug!r}")
        view = replace_quotas(session, tenant, overrides, actor="cli", actor_role="admin")
    for name, value in view.limits.model_dump().items():
        typer.echo(f"{name}={value}")


@admin.command("token")
def token(
    role: Annotated[str, typer.Option(help="admin or billing.")] = "admin",
    subject: Annotated[str, typer.Option(help="Who the token is for.")] = "celeriac-cli",
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds.", min=60)] = 3600,
) -> None:
    """Print a signed JWT for the admin or billing API."""
    from celeriac.platform.auth.jwt import Role, mint_token

    try:
        parsed = Role(role)
    except ValueError:
        raise CommandError(f"--role must be one of {[r.value for r in Role]}") from None
    typer.echo(mint_token(_settings(), subject, parsed, ttl))


# --- up -----------------------------------------------------------------------------------

DEMO_SLUG = "demo"


def _ensure_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CommandError(
                    f"port {port} on {host} is in use; stop what holds it or choose another "
                    "with --port (CELERIAC_API__PORT)"
                ) from None
            raise CommandError(f"cannot bind {host}:{port}: {exc.strerror}") from None


def _ensure_demo_tenant(settings: Settings) -> str:
    """Create the demo tenant and its key on first run; the key is kept in var/secrets."""
    from celeriac.platform.db import transaction
    from celeriac.platform.keys.service import create_api_key
    from celeriac.platform.tenants import service as tenants

    key_file = settings.var_dir / "secrets" / "demo-api-key"
    with transaction() as session:
        tenant = tenants.get_tenant_by_slug(session, DEMO_SLUG)
        if tenant is not None and key_file.exists():
            return key_file.read_text().strip()
        if tenant is None:
            tenant = tenants.create_tenant(session, slug=DEMO_SLUG, name="Demo", actor="up")
        issued = create_api_key(
            session, tenant_id=tenant.id, pepper=settings.api_key_pepper(),
            name="demo key created by celeriac up", created_by="up",
        )  # fmt: skip
    key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_file.touch(mode=0o600)
    key_file.write_text(issued.plaintext)
    return issued.plaintext


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]


def _start(name: str, args: list[str]) -> Child:
    # A session of its own: Ctrl-C reaches only `up`, which then stops children in order.
    process = subprocess.Popen(
        [sys.executable, "-m", "celeriac.platform.cli", *args], start_new_session=True
    )
    return Child(name, process)


def _stop_all(children: list[Child], grace: float = 20.0) -> None:
    for child in children:
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()


def _wait_healthy(url: str, children: list[Child], timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children:
            if child.process.poll() is not None:
                raise CommandError(f"{child.name} exited with status {child.process.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise CommandError(f"the API did not answer on {url} within {timeout:.0f} s")


class _Interrupted(Exception):
    pass


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise _Interrupted(signal.Signals(signum).name)


@cli.command()
def up(
    port: Annotated[int | None, typer.Option(help="API port.")] = None,
) -> None:
    """Run everything on one machine: migrate, then the API, one worker per pool and beat.
    Creates a demo tenant and API key on first run; Ctrl-C stops everything."""
    from celeriac.platform import migrate as migrations
    from celeriac.platform.auth.jwt import Role, mint_token

    settings = _settings()
    host, port = settings.api.host, port or settings.api.port
    _ensure_port_free(host, port)
    migrations.upgrade()
    api_key = _ensure_demo_tenant(settings)
    admin_token = mint_token(settings, "celeriac-up", Role.ADMIN, ttl_seconds=12 * 3600)

    signal.signal(signal.SIGINT, _raise_interrupted)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    children: list[Child] = []
    status = 0
    try:
        children.append(_start("api", ["api", "--host", host, "--port", str(port)]))
        for pool in Pool:
            children.append(_start(f"worker-{pool.value}", ["worker", "--pool", pool.value]))
        children.append(_start("beat", ["beat"]))
        url = f"http://{host}:{port}"
        _wait_healthy(url, children)
        typer.echo(
            f"\nCeleriac is up at {url} (docs at {url}/docs)\n"
            f"  console:     {url}/console (sign in with the key or the token below)\n"
            f"  tenant:      {DEMO_SLUG}\n"
            f"  API key:     {api_key}\n"
            f"  admin token: {admin_token}\n"
            "Press Ctrl-C to stop.\n",
        )
        while True:
            for child in children:
                if child.process.poll() is not None:
                    raise CommandError(
                        f"{child.name} exited with status {child.process.returncode}; "
                        "stopping everything"
                    )
            time.sleep(0.5)
    except _Interrupted:
        typer.echo("stopping...", err=True)
    except CommandError:
        status = 1
        raise
    finally:
        _stop_all(children)
        if status == 0:
            typer.echo("stopped", err=True)


def main() -> None:
    """Entry point: settings and usage errors are one line on stderr, never a traceback."""
    try:
        cli()
    except SettingsError as exc:
        print(f"celeriac: invalid setting: {exc}", file=sys.stderr)
        sys.exit(2)
    except CommandError as exc:
        print(f"celeriac: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
