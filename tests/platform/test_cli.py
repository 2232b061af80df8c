"""The celeriac command: every subcommand explains itself; bad input is one clear line."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from celeriac.platform.auth.jwt import Role, verify_token
from celeriac.platform.cli import CommandError, _children_env, _ensure_port_free
from celeriac.platform.keys.tokens import parse_key
from celeriac.platform.settings import load_settings

from support import celeriac_env, free_port, run_celeriac


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "multi-tenant"),
        (["up"], "one machine"),
        (["api"], "REST API"),
        (["worker"], "--pool"),
        (["beat"], "reconciler"),
        (["migrate"], "migrations"),
        (["admin"], "create-tenant"),
        (["admin", "create-tenant"], "API key"),
        (["admin", "token"], "JWT"),
        (["admin", "set-quotas"], "overrides"),
    ],
)
def test_help_explains_each_command(var_dir: Path, args: list[str], expected: str) -> None:
    result = run_celeriac(var_dir, *args, "--help")
    assert result.returncode == 0, result.stderr
    assert expected in " ".join(result.stdout.split())


def test_bad_setting_is_one_line_naming_it(var_dir: Path) -> None:
    result = run_celeriac(var_dir, "migrate", broker_url="kafka://b:9092")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "CELERIAC_BROKER_URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_pool_is_a_usage_error(var_dir: Path) -> None:
    result = run_celeriac(var_dir, "worker", "--pool", "gpu")
    assert result.returncode == 2
    assert "'gpu' is not one of" in result.stderr
    assert "Traceback" not in result.stderr


def test_up_on_a_port_in_use_says_so(var_dir: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_celeriac(var_dir, "up", "--port", str(port))
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_create_tenant_prints_a_working_key_once(
    var_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run_celeriac(var_dir, "migrate").returncode == 0
    created = run_celeriac(var_dir, "admin", "create-tenant", "acme-corp", "--plan", "pro")
    assert created.returncode == 0, created.stderr
    fields = dict(line.split("=", 1) for line in created.stdout.split())
    assert parse_key(fields["api_key"]) is not None

    again = run_celeriac(var_dir, "admin", "create-tenant", "acme-corp")
    assert again.returncode == 1
    assert "already exists" in again.stderr

    bad = run_celeriac(var_dir, "admin", "create-tenant", "Acme Corp")
    assert bad.returncode == 1
    assert "lowercase letters" in bad.stderr


def test_set_quotas_overrides_the_plan_and_says_what_is_wrong(var_dir: Path) -> None:
    assert run_celeriac(var_dir, "migrate").returncode == 0
    assert run_celeriac(var_dir, "admin", "create-tenant", "quota-cli").returncode == 0
    done = run_celeriac(
        var_dir, "admin", "set-quotas", "quota-cli", "max_running_jobs=7", "request_burst=plan"
    )
    assert done.returncode == 0, done.stderr
    limits = dict(line.split("=", 1) for line in done.stdout.split())
    assert limits["max_running_jobs"] == "7"
    assert limits["request_burst"] == "50"
    bad = run_celeriac(var_dir, "admin", "set-quotas", "quota-cli", "max_running_jobs=0")
    assert bad.returncode == 1
    assert "max_running_jobs" in bad.stderr
    missing = run_celeriac(var_dir, "admin", "set-quotas", "nobody", "jobs_per_month=1")
    assert missing.returncode == 1
    assert "no tenant with slug" in missing.stderr


def test_admin_token_verifies_with_the_same_settings(
    var_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CELERIAC_VAR_DIR", str(var_dir))
    settings = load_settings()  # the instance's secrets, as `celeriac up` makes them
    result = run_celeriac(var_dir, "admin", "token", "--role", "billing", "--subject", "ops")
    assert result.returncode == 0, result.stderr
    principal = verify_token(settings, result.stdout.strip())
    assert (principal.subject, principal.role) == ("ops", Role.BILLING)

    wrong = run_celeriac(var_dir, "admin", "token", "--role", "root")
    assert wrong.returncode == 1
    assert "--role must be one of" in wrong.stderr


def _time_wait_on(port: int) -> None:
    """Leave a connection of ``port`` in TIME_WAIT, as a crashed API leaves its own: the
    server side closes first."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(1)
        client = socket.create_connection(("127.0.0.1", port))
        served, _ = listener.accept()
        served.close()  # the active close: this side of the connection enters TIME_WAIT
        client.recv(1)
        client.close()


def test_api_restarts_at_once_over_connections_in_time_wait(var_dir: Path) -> None:
    port = free_port()
    _time_wait_on(port)
    _ensure_port_free("127.0.0.1", port)  # TIME_WAIT does not hold the port
    with socket.socket() as holder:  # a listener does
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        holder.bind(("127.0.0.1", port))
        holder.listen(1)
        with pytest.raises(CommandError, match=f"port {port} on 127.0.0.1 is in use"):
            _ensure_port_free("127.0.0.1", port)


def test_admin_token_elsewhere_refuses_instead_of_inventing_secrets(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = celeriac_env(tmp_path / "var")
    del env["CELERIAC_VAR_DIR"]  # the default, ./var of the current directory
    result = subprocess.run(
        [sys.executable, "-m", "celeriac.platform.cli", "admin", "token"],
        env=env,
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stdout
    assert "no Celeriac instance here" in result.stderr
    assert "CELERIAC_VAR_DIR" in result.stderr
    assert result.stdout == ""
    assert list(elsewhere.iterdir()) == []  # no var/, no new secrets


def test_up_on_another_port_names_that_port_in_webhook_events(
    var_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`up --port 8123` (or CELERIAC_API__PORT): a job event's results_url points at the
    API that runs, not at the default 8000; a public URL that is set is kept."""
    monkeypatch.setenv("CELERIAC_VAR_DIR", str(var_dir))
    children = _children_env(load_settings(), "http://127.0.0.1:8123")
    assert children is not None
    monkeypatch.setattr("os.environ", children)
    assert load_settings().webhooks.public_api_url == "http://127.0.0.1:8123"

    monkeypatch.setenv("CELERIAC_WEBHOOKS__PUBLIC_API_URL", "https://api.example.com")
    assert _children_env(load_settings(), "http://127.0.0.1:8123") is None
