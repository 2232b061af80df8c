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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError

if TYPE_CHECKING:
    import uvicorn

from celeriac.platform.queues import Pool
from celeriac.platform.settings import Settings, SettingsError, get_settings
from celeriac.platform.version import VERSION

CELERY_APP = "celeriac.workers.celery_app"

cli = typer.Typer(
    help="Celeriac: multi-tenant data-processing workflows on Celery.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
admin = typer.Typer(help="Administer tenants and tokens.", no_args_is_help=True)
cli.add_typer(admin, name="admin")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"celeriac {VERSION}")
        raise typer.Exit()


@cli.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Celeriac: multi-tenant data-processing workflows on Celery."""


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
    # Imported here: a command imports only what it runs.
    from celeriac.platform import migrate as migrations  # noqa: PLC0415

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
    import uvicorn  # noqa: PLC0415 - a command imports only what it runs

    settings = _settings()
    host = host or settings.api.host
    port = port or settings.api.port
    _ensure_port_free(host, port)
    _metrics_dir(settings, f"api-{port}")
    # Logging, Sentry, tracing: in the factory, which every uvicorn process runs.
    config = uvicorn.Config(
        "celeriac.platform.ops.server:create_asgi_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        proxy_headers=True,
        timeout_worker_healthcheck=settings.api.worker_healthcheck_seconds,
    )
    ports = [port]
    if settings.api.ops_port is not None:
        # The ops port (the backlog for KEDA) is a second socket of the same processes.
        _ensure_port_free(host, settings.api.ops_port)
        ports.append(settings.api.ops_port)
    _serve(config, ports)


def _serve(config: uvicorn.Config, ports: list[int]) -> None:
    """What ``uvicorn.run`` does, with one listening socket per port (it binds only one)."""
    # Imported here: a command imports only what it runs.
    import uvicorn  # noqa: PLC0415
    from uvicorn.supervisors import Multiprocess  # noqa: PLC0415

    sockets = []
    for port in ports:
        config.port = port
        sockets.append(config.bind_socket())
    config.port = ports[0]
    if config.workers > 1:
        Multiprocess(config, sockets=sockets).run()
        return
    server = uvicorn.Server(config)
    server.run(sockets=sockets)
    if not server.started:  # as uvicorn.run: a failed start-up is a failed command
        raise SystemExit(3)


MetricsPort = Annotated[
    int | None,
    typer.Option(
        help="Serve Prometheus metrics on this port (CELERIAC_OBSERVABILITY__METRICS_PORT)."
    ),
]


def _metrics_dir(settings: Settings, name: str, port: int | None = None) -> None:
    """Point this process and its children at a freshly wiped multiprocess directory of
    their own (before anything imports prometheus-client), and pass ``port`` on."""
    if port is not None:
        os.environ["CELERIAC_OBSERVABILITY__METRICS_PORT"] = str(port)
    if settings.observability.metrics_enabled:
        # Imported here: a command imports only what it runs.
        # metrics_dir, not metrics: that one imports prometheus-client, which would then
        # keep this process's values in memory and serve an empty /metrics.
        from celeriac.platform.metrics_dir import prepare_multiprocess_dir  # noqa: PLC0415

        prepare_multiprocess_dir(settings.observability.metrics_dir / name)


def worker_argv(settings: Settings, pool: Pool, concurrency: int | None) -> list[str]:
    """The ``celery worker`` command line for one pool."""
    ws = settings.workers
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        CELERY_APP,
        "worker",
        "--queues",
        pool.value,
        "--hostname",
        f"{pool.value}@%h",
        "--without-mingle",
        "--without-gossip",
    ]
    if pool is Pool.COMPUTE:
        argv += [
            "--pool",
            "prefork",
            "--concurrency",
            str(concurrency or ws.compute_concurrency),
            "-O",
            "fair",
            "--prefetch-multiplier",
            "1",
            "--max-tasks-per-child",
            str(ws.compute_max_tasks_per_child),
        ]
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
    metrics_port: MetricsPort = None,
) -> None:
    """Run a Celery worker for one pool: orchestration and distribution on gevent,
    compute on prefork with fair scheduling, prefetch 1 and late acks."""
    settings = _settings()
    port = metrics_port or settings.observability.metrics_port
    _metrics_dir(settings, f"worker-{pool.value}-{port or os.getpid()}", metrics_port)
    os.execv(sys.executable, worker_argv(settings, pool, concurrency))


@cli.command()
def beat(metrics_port: MetricsPort = None) -> None:
    """Run Celery beat: the reconciler and other periodic work."""
    settings = _settings()
    _metrics_dir(settings, "beat", metrics_port)
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
    # Imported here: a command imports only what it runs.
    from celeriac.platform.db import transaction  # noqa: PLC0415
    from celeriac.platform.keys.service import create_api_key  # noqa: PLC0415
    from celeriac.platform.tenants import service as tenants  # noqa: PLC0415

    settings = _settings()
    try:
        with transaction() as session:
            tenant = tenants.create_tenant(session, slug=slug, name=name or slug, plan=plan)
            issued = (
                create_api_key(
                    session,
                    tenant_id=tenant.id,
                    pepper=settings.api_key_pepper(),
                    name="created by celeriac admin create-tenant",
                    created_by="cli",
                )
                if with_key
                else None
            )
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
        typer.Argument(
            help="NAME=VALUE overrides, e.g. requests_per_second=100; "
            "NAME=plan follows the plan. Names not given follow the plan."
        ),
    ] = None,
) -> None:
    """Replace a tenant's quota overrides (as PUT /v1/admin/tenants/{id}/quotas; audited)."""
    # Imported here: a command imports only what it runs.
    from pydantic import ValidationError  # noqa: PLC0415

    from celeriac.platform.db import transaction  # noqa: PLC0415
    from celeriac.platform.quotas.schemas import QuotaOverrides  # noqa: PLC0415
    from celeriac.platform.quotas.service import set_quotas as replace_quotas  # noqa: PLC0415
    from celeriac.platform.tenants import service as tenants  # noqa: PLC0415

    _settings()
    values: dict[str, int | str | None] = {}
    for item in limits or []:
        name, _, value = item.partition("=")
        # A shell argument is text; the limits are strict integers (the API takes no "5").
        values[name] = None if value == "plan" else int(value) if value.isdigit() else value
    try:
        overrides = QuotaOverrides.model_validate(values)
    except ValidationError as exc:
        raise CommandError(
            f"invalid quotas: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}"
        ) from None
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
    # Imported here: a command imports only what it runs.
    from celeriac.platform.auth.jwt import Role, mint_token  # noqa: PLC0415

    try:
        parsed = Role(role)
    except ValueError:
        raise CommandError(f"--role must be one of {[r.value for r in Role]}") from None
    _refuse_without_an_instance()
    typer.echo(mint_token(_settings(), subject, parsed, ttl))


def _refuse_without_an_instance() -> None:
    """A token signed with a secret generated on the spot (in a var/ of the current
    directory) is one no running API accepts: refuse, and say where to run instead."""
    try:
        raw = Settings()
    except ValidationError:
        return  # _settings() reports the bad setting in its one line
    secret = raw.var_dir / "secrets" / "jwt-hs256"
    if raw.auth.jwt_hs256_secret is None and not secret.exists():
        raise CommandError(
            f"no Celeriac instance here: {secret.resolve()} does not exist. Run this in "
            "the directory where `celeriac up` runs (it reads ./var), or set "
            "CELERIAC_VAR_DIR to that var directory (or CELERIAC_AUTH__JWT_HS256_SECRET "
            "to the API's secret)"
        )


# --- up -----------------------------------------------------------------------------------

DEMO_SLUG = "demo"


def _ensure_port_free(host: str, port: int) -> None:
    """Refuse at once, in one line, when another process listens on the port."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # As uvicorn binds (SO_REUSEADDR): connections of a crashed API left in TIME_WAIT
        # do not hold the port, a listener does. Without it a restart failed for ~60 s.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
    # Imported here: a command imports only what it runs.
    from celeriac.platform.db import transaction  # noqa: PLC0415
    from celeriac.platform.keys.service import create_api_key  # noqa: PLC0415
    from celeriac.platform.tenants import service as tenants  # noqa: PLC0415

    key_file = settings.var_dir / "secrets" / "demo-api-key"
    with transaction() as session:
        tenant = tenants.get_tenant_by_slug(session, DEMO_SLUG)
        if tenant is not None and key_file.exists():
            return key_file.read_text().strip()
        if tenant is None:
            tenant = tenants.create_tenant(session, slug=DEMO_SLUG, name="Demo", actor="up")
        issued = create_api_key(
            session,
            tenant_id=tenant.id,
            pepper=settings.api_key_pepper(),
            name="demo key created by celeriac up",
            created_by="up",
        )
    key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_file.touch(mode=0o600)
    key_file.write_text(issued.plaintext)
    return issued.plaintext


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]


def _start(name: str, args: list[str], env: dict[str, str] | None = None) -> Child:
    # A session of its own: Ctrl-C reaches only `up`, which then stops children in order.
    process = subprocess.Popen(
        [sys.executable, "-m", "celeriac.platform.cli", *args], start_new_session=True, env=env
    )
    return Child(name, process)


def _children_env(settings: Settings, url: str) -> dict[str, str] | None:
    """The children's environment: the webhook events' ``results_url`` names the API
    ``up`` runs (``--port``, ``CELERIAC_API__PORT``) unless the public URL is set."""
    if "public_api_url" in settings.webhooks.model_fields_set:
        return None
    return {**os.environ, "CELERIAC_WEBHOOKS__PUBLIC_API_URL": url}


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


def _progress(message: str) -> None:
    typer.echo(f"celeriac up: {message}", err=True)


def _check_children(children: list[Child]) -> None:
    for child in children:
        if child.process.poll() is not None:
            raise CommandError(f"{child.name} exited with status {child.process.returncode}")


def _wait_for(what: str, ready: Callable[[], bool], children: list[Child], deadline: float) -> None:
    """Poll ``ready`` until it holds, a child exits, or the deadline passes."""
    _progress(f"waiting for {what}...")
    started = time.monotonic()
    while not ready():
        _check_children(children)
        if time.monotonic() > deadline:
            raise CommandError(f"{what} did not become ready in time; see the logs above")
        time.sleep(0.2)
    _progress(f"{what}: ready after {time.monotonic() - started:.1f} s")


def _api_answers(url: str) -> bool:
    import httpx  # noqa: PLC0415 - a command imports only what it runs

    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _pool_answers(settings: Settings) -> Callable[[Pool], Callable[[], bool]]:
    """A ping task per pool, sent once and awaited: the worker consumes and answers."""
    # Imported here: a command imports only what it runs.
    from celery import Celery  # noqa: PLC0415
    from celery.exceptions import TimeoutError as CeleryTimeout  # noqa: PLC0415

    from celeriac.platform.tasks import celery_config  # noqa: PLC0415

    client = Celery("celeriac-up", set_as_current=False)
    client.conf.update(celery_config(settings))

    def for_pool(pool: Pool) -> Callable[[], bool]:
        result = client.send_task(f"celeriac.{pool.value}.ping", queue=pool.value)

        def answered() -> bool:
            try:
                return bool(result.get(timeout=1) == pool.value)
            except CeleryTimeout:
                return False

        return answered

    return for_pool


def _registry_published() -> bool:
    # Imported here: a command imports only what it runs.
    from celeriac.platform.jobs.pipelines import load_plugins  # noqa: PLC0415

    return bool(load_plugins())


def _wait_ready(settings: Settings, url: str, children: list[Child], timeout: float) -> None:
    """The banner's promise: the API answers, every pool consumes its queue, and the
    compute worker has published its plugins (so the README's first job is accepted)."""
    deadline = time.monotonic() + timeout
    _wait_for(f"the API on {url}", lambda: _api_answers(url), children, deadline)
    ping = _pool_answers(settings)
    for pool in Pool:
        _wait_for(f"the {pool.value} worker", ping(pool), children, deadline)
    _wait_for("the compute worker's plugin registry", _registry_published, children, deadline)


def _write_credentials(settings: Settings, banner: str) -> Path:
    """The banner, kept where it does not scroll away (owner-only: it holds secrets)."""
    path = settings.var_dir / "credentials"
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(banner)
    return path


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
    # Imported here: a command imports only what it runs.
    from celeriac.platform import migrate as migrations  # noqa: PLC0415
    from celeriac.platform.auth.jwt import Role, mint_token  # noqa: PLC0415

    settings = _settings()
    host, port = settings.api.host, port or settings.api.port
    _ensure_port_free(host, port)
    _progress(f"migrating the database ({settings.database_url})")
    migrations.upgrade()
    api_key = _ensure_demo_tenant(settings)
    admin_token = mint_token(settings, "celeriac-up", Role.ADMIN, ttl_seconds=12 * 3600)

    signal.signal(signal.SIGINT, _raise_interrupted)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    children: list[Child] = []
    status = 0
    try:
        _progress("starting the API, one worker per pool and beat")
        url = f"http://{host}:{port}"
        env = _children_env(settings, url)
        children.append(_start("api", ["api", "--host", host, "--port", str(port)], env))
        for pool in Pool:
            children.append(_start(f"worker-{pool.value}", ["worker", "--pool", pool.value], env))
        children.append(_start("beat", ["beat"], env))
        _wait_ready(settings, url, children, timeout=settings.api.up_ready_timeout_seconds)
        banner = (
            f"Celeriac is up at {url} (docs at {url}/docs)\n"
            f"  console:     {url}/console (sign in with the key or the token below)\n"
            f"  tenant:      {DEMO_SLUG}\n"
            f"  API key:     {api_key}\n"
            f"  admin token: {admin_token}\n"
        )
        credentials = _write_credentials(settings, banner)
        typer.echo(
            f"\n{banner}"
            f"  (also in {credentials}, mode 0600; the command is .venv/bin/celeriac)\n"
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
