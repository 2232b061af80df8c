"""The Helm chart (helm/celeriac), rendered offline by Helm's own Go SDK (the
helm-python-sdk wheel) and checked as a cluster would check it: Kubernetes' schemas for the
core kinds, KEDA's CRD schema for the ScaledObjects, checkov for the security posture, and
the platform's own settings object for every CELERIAC_* variable a pod gets."""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from celeriac.platform.ops.routes import PoolDemand, metrics_router
from celeriac.platform.queues import Pool, parse_queue
from celeriac.platform.settings import Settings, load_settings
from celeriac.workers.health import heartbeat_path

from deploy_support import REPO, failures, run_checkov, unjustified_skips

CHART = REPO / "helm" / "celeriac"
# KEDA v2.20.2's ScaledObject and TriggerAuthentication CRDs (config/crd/bases), vendored
# so the test needs nothing outside the repo; test_vendored_crd_matches_the_shared_copy
# keeps them honest.
CRDS = Path(__file__).resolve().parent / "crds"
SHARED_CRDS = REPO.parent / "shared" / "k8s-schemas"
RELEASE, NAMESPACE = "celeriac", "celeriac"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas.
KUBE_VERSIONS = ("1.29", kubernetes_validate.latest_version())
BASE_VALUES: dict[str, Any] = {
    "secrets": {"existingSecret": "celeriac-env"},
    "config": {"blob": {"s3Bucket": "celeriac-blobs"}},
}
# What the operator puts in the existing Secret (values.yaml, helm/README.md).
SECRET_ENV = {
    "CELERIAC_DATABASE_URL": "postgresql+psycopg://celeriac:pw@db.internal:5432/celeriac",
    "CELERIAC_BROKER_URL": "rediss://:token@redis.internal:6379/0?ssl_cert_reqs=required",
    "CELERIAC_REDIS_URL": "rediss://:token@redis.internal:6379/1?ssl_cert_reqs=required",
    "CELERIAC_AUTH__JWT_HS256_SECRET": "x" * 48,
    "CELERIAC_AUTH__API_KEY_PEPPER": "y" * 48,
    "CELERIAC_API__METRICS_TOKEN": "m" * 48,
}
POOLS = {pool.value for pool in Pool}


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every object the chart renders with BASE_VALUES plus ``values``, hooks included."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(
            merged(BASE_VALUES, values or {}),
            name=RELEASE,
            namespace=NAMESPACE,
            is_install=True,
        )
    return [
        doc
        for name, text in sorted(manifests.items())
        if name.endswith((".yaml", ".yml"))
        for doc in yaml.safe_load_all(text)
        if doc
    ]


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return render()


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def workers(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Worker Deployments by the pool their container serves."""
    found = {}
    for deployment in of_kind(objects, "Deployment").values():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        if container["args"][0] == "worker":
            found[container["args"][container["args"].index("--pool") + 1]] = deployment
    return found


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings(key)
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


# --- schemas ------------------------------------------------------------------------------


def test_helm_lint_is_clean() -> None:
    report = helm.lint(CHART, BASE_VALUES, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_core_objects_validate_against_the_kubernetes_schemas(
    objects: list[dict[str, Any]], kube_version: str
) -> None:
    core = [o for o in objects if not o["apiVersion"].startswith(("keda.sh/", "external-"))]
    assert {o["kind"] for o in core} >= {
        "ConfigMap",
        "Deployment",
        "Job",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    }
    for obj in core:
        # strict: an unknown field is an error, as with server-side field validation.
        kubernetes_validate.validate(obj, kube_version, strict=True)


def _strict(schema: Any) -> Any:
    """The CRD schema with unknown fields rejected, as the API server's strict field
    validation does (a structural schema prunes them silently otherwise)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


def _crd_schema(kind: str, version: str) -> dict[str, Any]:
    for path in CRDS.glob("keda.sh_*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            for served in crd["spec"]["versions"]:
                if served["name"] == version:
                    return dict(_strict(served["schema"]["openAPIV3Schema"]))
    raise AssertionError(f"no vendored CRD for {kind} {version} in {CRDS}")


def test_keda_objects_validate_against_the_crd_schemas(objects: list[dict[str, Any]]) -> None:
    keda = [o for o in objects if o["apiVersion"].startswith("keda.sh/")]
    assert {o["kind"] for o in keda} == {"ScaledObject", "TriggerAuthentication"}
    for obj in keda:
        schema = _crd_schema(obj["kind"], obj["apiVersion"].split("/")[1])
        jsonschema.Draft7Validator(schema).validate(obj)


def test_the_strict_crd_schema_refuses_what_keda_would_refuse() -> None:
    (scaled,) = [o for o in render() if o["kind"] == "ScaledObject"][:1]
    schema = jsonschema.Draft7Validator(_crd_schema("ScaledObject", "v1alpha1"))
    unquoted = copy.deepcopy(scaled)
    unquoted["spec"]["triggers"][0]["metadata"]["targetValue"] = 2
    misspelt = copy.deepcopy(scaled)
    misspelt["spec"]["minReplicas"] = 1
    for bad in (unquoted, misspelt):
        assert not schema.is_valid(bad)


@pytest.mark.parametrize(
    "name", ["keda.sh_scaledobjects.yaml", "keda.sh_triggerauthentications.yaml"]
)
def test_vendored_crd_matches_the_shared_copy(name: str) -> None:
    shared = SHARED_CRDS / name
    if not shared.exists():
        pytest.skip(f"{shared} is not on this machine")
    assert (CRDS / shared.name).read_bytes() == shared.read_bytes()


# --- what the platform needs --------------------------------------------------------------


def _container_env(obj: dict[str, Any], objects: list[dict[str, Any]]) -> dict[str, str]:
    """The environment the pod's container starts with (the Secret's keys as documented)."""
    (container,) = obj["spec"]["template"]["spec"]["containers"]
    config_maps = of_kind(objects, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert set(source) == {"configMapRef"}  # secrets come key by key, never whole
        env |= config_maps[source["configMapRef"]["name"]]["data"]
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "celeriac-env"
        assert ref["key"] == item["name"]
        if ref["key"] in SECRET_ENV:
            env[item["name"]] = SECRET_ENV[ref["key"]]
        else:
            assert ref.get("optional") is True, ref  # the Secret need not hold it
    return env


def _secret_keys(obj: dict[str, Any]) -> dict[str, bool]:
    """The Secret keys a pod's container reads, each with whether it is required."""
    (container,) = obj["spec"]["template"]["spec"]["containers"]
    return {
        item["valueFrom"]["secretKeyRef"]["key"]: not item["valueFrom"]["secretKeyRef"].get(
            "optional", False
        )
        for item in container.get("env", [])
        if "valueFrom" in item
    }


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    with monkeypatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("CELERIAC_")]:
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        return load_settings()  # raises on an unknown or invalid CELERIAC_* variable


def test_every_pod_gets_settings_the_platform_accepts(
    objects: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    pods = [o for o in objects if o["kind"] in {"Deployment", "Job"}]
    assert len(pods) == 3 + len(Pool)  # api, beat, migrate and one per pool
    for obj in pods:
        settings = _settings_from(_container_env(obj, objects), monkeypatch)
        assert settings.api.host == "0.0.0.0"
        assert settings.blob.backend == "s3"
        assert settings.blob.s3_bucket == "celeriac-blobs"
        assert settings.keys.provider == "kms"
        assert str(settings.var_dir) == "/var/lib/celeriac"
        mounts = {
            m["mountPath"] for m in obj["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        }
        assert {"/tmp", str(settings.var_dir)} <= mounts  # the root fs is read-only


def test_one_worker_deployment_per_pool_with_its_own_scaled_object(
    objects: list[dict[str, Any]],
) -> None:
    deployments = workers(objects)
    assert set(deployments) == POOLS
    scaled = {
        o["spec"]["scaleTargetRef"]["name"]: o for o in of_kind(objects, "ScaledObject").values()
    }
    service = of_kind(objects, "Service")[f"{RELEASE}-api-ops"]
    (auth,) = of_kind(objects, "TriggerAuthentication").values()
    (backlog_route,) = [r.path for r in metrics_router.routes]
    for pool, deployment in deployments.items():
        assert "replicas" not in deployment["spec"]  # KEDA's HPA owns the count
        so = scaled[deployment["metadata"]["name"]]
        (trigger,) = so["spec"]["triggers"]
        assert trigger["type"] == "metrics-api"
        meta = trigger["metadata"]
        field = meta["valueLocation"].split(".")
        assert field == [pool, "demand"]
        assert "demand" in PoolDemand.model_fields
        assert meta["url"] == (
            f"http://{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local:"
            f"{service['spec']['ports'][0]['port']}{backlog_route}"
        )
        assert meta["authMode"] == "bearer"
        assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
        assert int(meta["targetValue"]) >= 1
        assert so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]
        # A failed metrics read keeps a busy pool's replicas instead of cutting it to 2.
        assert so["spec"]["fallback"]["behavior"] == "currentReplicasIfHigher"
    assert scaled[f"{RELEASE}-worker-orchestration"]["spec"]["minReplicaCount"] >= 1


def test_compute_target_follows_its_concurrency() -> None:
    objects = render({"workers": {"compute": {"concurrency": 4}}})
    so = of_kind(objects, "ScaledObject")[f"{RELEASE}-worker-compute"]
    assert so["spec"]["triggers"][0]["metadata"]["targetValue"] == "4"
    assert (
        of_kind(objects, "ConfigMap")[f"{RELEASE}-config"]["data"][
            "CELERIAC_WORKERS__COMPUTE_CONCURRENCY"
        ]
        == "4"
    )


def test_compute_may_scale_to_zero_and_still_validates() -> None:
    objects = render({"workers": {"compute": {"autoscaling": {"minReplicaCount": 0}}}})
    so = of_kind(objects, "ScaledObject")[f"{RELEASE}-worker-compute"]
    assert so["spec"]["minReplicaCount"] == 0
    jsonschema.Draft7Validator(_crd_schema("ScaledObject", "v1alpha1")).validate(so)


def test_compute_grace_period_outlasts_its_hard_time_limit(
    objects: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    compute = workers(objects)["compute"]
    settings = _settings_from(_container_env(compute, objects), monkeypatch)
    grace = compute["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= settings.workers.compute_hard_time_limit + 30
    assert grace > Settings().workers.compute_hard_time_limit  # the platform's default too
    assert settings.workers.visibility_timeout > settings.workers.compute_hard_time_limit
    longer = render({"workers": {"compute": {"softTimeLimit": 1000, "hardTimeLimit": 1200}}})
    assert (
        workers(longer)["compute"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        == 1260
    )


def test_beat_is_exactly_one_replica_replaced_by_recreate(objects: list[dict[str, Any]]) -> None:
    beat = of_kind(objects, "Deployment")[f"{RELEASE}-beat"]
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    assert not [
        o
        for o in objects
        if o["kind"] == "ScaledObject" and o["spec"]["scaleTargetRef"]["name"] == f"{RELEASE}-beat"
    ]


def test_migrations_run_as_a_hook_before_install_and_upgrade(
    objects: list[dict[str, Any]],
) -> None:
    job = of_kind(objects, "Job")[f"{RELEASE}-migrate"]
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] + container["args"] == ["celeriac", "migrate"]
    # It cannot use what a pre-install hook runs before: the ConfigMap, the ServiceAccount.
    assert "envFrom" not in container
    assert set(_secret_keys(job)) == {"CELERIAC_DATABASE_URL", "CELERIAC_SENTRY_DSN"}
    assert "serviceAccountName" not in job["spec"]["template"]["spec"]


def test_api_probes_service_and_disruption_budgets(objects: list[dict[str, Any]]) -> None:
    api = of_kind(objects, "Deployment")[f"{RELEASE}-api"]
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    service = of_kind(objects, "Service")[f"{RELEASE}-api"]
    assert service["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]
    budgets = {b["metadata"]["name"] for b in of_kind(objects, "PodDisruptionBudget").values()}
    assert budgets == {f"{RELEASE}-api"} | {f"{RELEASE}-worker-{p}" for p in POOLS}


def test_every_pod_runs_unprivileged_on_a_read_only_root(objects: list[dict[str, Any]]) -> None:
    for obj in (o for o in objects if o["kind"] in {"Deployment", "Job"}):
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["requests"]
            assert container["resources"]["limits"]


def test_the_chart_spells_no_queue_name(objects: list[dict[str, Any]]) -> None:
    # Queue names belong to celeriac.platform.queues; the chart needs only the pool names
    # (the Pool enum, checked above), which are also the ready queues' names.
    with helm.Chart.load(CHART) as chart:
        sources = [t["data"] for t in chart.templates] + [yaml.safe_dump(chart.values)]
    words = {w.strip("\"'{}()[],:") for text in [*sources, *strings(objects)] for w in text.split()}
    assert [w for w in words if parse_queue(w) is not None] == []


def test_without_keda_each_pool_runs_its_configured_replicas() -> None:
    objects = render({"keda": {"enabled": False}, "workers": {"compute": {"replicas": 3}}})
    assert of_kind(objects, "ScaledObject") == {}
    assert workers(objects)["compute"]["spec"]["replicas"] == 3


# --- secrets and refused values -----------------------------------------------------------


def test_a_chart_made_secret_is_a_hook_the_migration_can_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    objects = render({"secrets": {"existingSecret": "", "create": True, "env": SECRET_ENV}})
    secret = of_kind(objects, "Secret")[f"{RELEASE}-secrets"]
    assert secret["stringData"] == SECRET_ENV
    assert secret["metadata"]["annotations"]["helm.sh/hook-weight"] == "-10"
    job = of_kind(objects, "Job")[f"{RELEASE}-migrate"]
    assert int(job["metadata"]["annotations"]["helm.sh/hook-weight"]) > -10
    for obj in (o for o in objects if o["kind"] in {"Deployment", "Job"}):
        (container,) = obj["spec"]["template"]["spec"]["containers"]
        names = {
            e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e
        }
        assert names == {f"{RELEASE}-secrets"}
    kubernetes_validate.validate(secret, KUBE_VERSIONS[0], strict=True)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"secrets": {"existingSecret": ""}}, "secrets.existingSecret"),
        (
            {
                "secrets": {
                    "existingSecret": "",
                    "create": True,
                    "env": SECRET_ENV | {"CELERIAC_LOG__LEVEL": "INFO"},
                }
            },
            "not a secret",
        ),
        ({"secrets": {"existingSecret": "", "create": True, "env": {}}}, "required"),
        ({"workers": {"gpu": {"concurrency": 1}}}, "gpu"),
        ({"workers": {"compute": {"softTimeLimit": 400}}}, "softTimeLimit"),
        ({"workers": {"visibilityTimeout": 300}}, "visibilityTimeout"),
        ({"config": {"extra": {"CELERIAC_VAR_DIR": "/x"}}}, "set by the chart"),
        ({"config": {"extra": {"OTHER": "1"}}}, "OTHER"),
        ({"config": {"blob": {"s3Bucket": ""}}}, "s3Bucket"),
        ({"workers": {"compute": {"autoscaling": {"maxReplicaCount": "20"}}}}, "maxReplicaCount"),
    ],
)
def test_values_the_platform_cannot_run_with_are_refused(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render(values)


def test_extra_settings_reach_the_pods(monkeypatch: pytest.MonkeyPatch) -> None:
    objects = render({"config": {"extra": {"CELERIAC_JOBS__CHUNK_RECORDS": "1000"}}})
    settings = _settings_from(_container_env(workers(objects)["compute"], objects), monkeypatch)
    assert settings.jobs.chunk_records == 1000


# --- checkov ------------------------------------------------------------------------------


def test_checkov_finds_nothing_that_is_not_skipped_with_a_reason(
    objects: list[dict[str, Any]], tmp_path: Path
) -> None:
    for i, obj in enumerate(objects):
        path = tmp_path / f"{i:02d}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(obj))
    report = run_checkov(tmp_path, "kubernetes")
    assert failures(report) == []
    assert unjustified_skips(report) == []
    # Every skip written into the chart is one checkov needed (no stale exemptions).
    used = {(c["check_id"], c["resource"]) for c in report["results"]["skipped_checks"]}
    for obj in objects:
        for key, value in obj["metadata"].get("annotations", {}).items():
            if key.startswith("checkov.io/skip"):
                check = value.split("=", 1)[0]
                resource = f"{obj['kind']}.{NAMESPACE}.{obj['metadata']['name']}"
                assert (check, resource) in used, (check, resource)


# --- health, rollout, network, secrets per component --------------------------------------


def test_workers_and_beat_probe_the_heartbeat_their_process_writes(
    objects: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    by_name = {pool: deployment for pool, deployment in workers(objects).items()}
    by_name["beat"] = of_kind(objects, "Deployment")[f"{RELEASE}-beat"]
    assert set(by_name) == POOLS | {"beat"}
    for name, deployment in by_name.items():
        settings = _settings_from(_container_env(deployment, objects), monkeypatch)
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        expected = heartbeat_path(settings, name)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            command = container[probe]["exec"]["command"]
            assert command[:2] == ["celeriac-alive", str(expected)], (name, probe)
            # The file must be able to age past several heartbeats before a probe fails.
            assert int(command[2]) >= 3 * settings.workers.heartbeat_seconds
        assert container["livenessProbe"]["failureThreshold"] >= 2
    compute = by_name["compute"]["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    assert compute["periodSeconds"] * compute["failureThreshold"] >= 180  # imports first


def test_rollouts_keep_every_replica_and_spread_across_zones(
    objects: list[dict[str, Any]],
) -> None:
    for pool, deployment in workers(objects).items():
        strategy = deployment["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate", pool
        assert strategy["rollingUpdate"]["maxUnavailable"] == 0, pool
    for deployment in [
        *workers(objects).values(),
        of_kind(objects, "Deployment")[f"{RELEASE}-api"],
    ]:
        pod = deployment["spec"]["template"]
        zone = [
            c
            for c in pod["spec"]["topologySpreadConstraints"]
            if c["topologyKey"] == "topology.kubernetes.io/zone"
        ]
        assert zone
        assert (
            zone[0]["labelSelector"]["matchLabels"]
            == (deployment["spec"]["selector"]["matchLabels"])
        )
    compute = workers(objects)["compute"]["spec"]["template"]["metadata"]["annotations"]
    assert compute["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    for pool in POOLS - {"compute"}:
        annotations = workers(objects)[pool]["spec"]["template"]["metadata"]["annotations"]
        assert "cluster-autoscaler.kubernetes.io/safe-to-evict" not in annotations


def test_the_api_waits_before_it_stops(objects: list[dict[str, Any]]) -> None:
    api = of_kind(objects, "Deployment")[f"{RELEASE}-api"]["spec"]["template"]["spec"]
    (container,) = api["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    assert 0 < int(command[1]) < api["terminationGracePeriodSeconds"]


def test_phase_one_of_an_upgrade_needs_the_running_api() -> None:
    # Offline there is no cluster to look the running API up in: refused, never rendered
    # with a half-empty API.
    with pytest.raises(helm.HelmError, match=r"upgrade\.phase=workers"):
        render({"upgrade": {"phase": "workers"}})


# The one cluster read of phase 1. Helm's lookup answers only with a cluster (helm upgrade,
# or --dry-run=server); offline renders (helm template, this SDK) get an empty map.
LOOKUP = (
    'lookup "apps/v1" "Deployment" .Release.Namespace '
    '(printf "%s-api" (include "celeriac.fullname" .))'
)


def test_phase_one_keeps_the_running_apis_pod_template_and_moves_the_workers(
    tmp_path: Path,
) -> None:
    # The running API as the cluster would return it: the API Deployment of release 1.0.0.
    running = of_kind(render({"image": {"tag": "1.0.0"}}), "Deployment")[f"{RELEASE}-api"]
    # A copy of the chart whose lookup answers with it (Files.Get of a file in the copy);
    # everything else is the chart as it ships.
    chart = tmp_path / "celeriac"
    shutil.copytree(CHART, chart)
    (chart / "files" / "live-api.yaml").write_text(yaml.safe_dump(running))
    api_template = chart / "templates" / "api.yaml"
    source = api_template.read_text()
    assert source.count(LOOKUP) == 1  # the chart still reads the running API this way
    api_template.write_text(source.replace(LOOKUP, '.Files.Get "files/live-api.yaml" | fromYaml'))
    with helm.Chart.load(chart) as loaded:
        manifests = loaded.render(
            merged(BASE_VALUES, {"image": {"tag": "2.0.0"}, "upgrade": {"phase": "workers"}}),
            name=RELEASE,
            namespace=NAMESPACE,
            is_upgrade=True,
        )
    objects = [
        doc
        for name, text in sorted(manifests.items())
        if name.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    api = of_kind(objects, "Deployment")[f"{RELEASE}-api"]
    assert api["spec"]["template"] == running["spec"]["template"]
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert container["image"].endswith(":1.0.0")
    for name, deployment in [
        *workers(objects).items(),
        ("beat", of_kind(objects, "Deployment")[f"{RELEASE}-beat"]),
    ]:
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"].endswith(":2.0.0"), name
    (migrate,) = of_kind(objects, "Job")[f"{RELEASE}-migrate"]["spec"]["template"]["spec"][
        "containers"
    ]
    assert migrate["image"].endswith(":2.0.0")
    # What phase 1 applies is still a Deployment the API server accepts.
    kubernetes_validate.validate(api, KUBE_VERSIONS[0], strict=True)
    assert api["spec"]["selector"]["matchLabels"].items() <= (
        api["spec"]["template"]["metadata"]["labels"].items()
    )


def test_the_backlog_port_admits_only_keda_and_ignores_readiness(
    objects: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    api = of_kind(objects, "Deployment")[f"{RELEASE}-api"]
    settings = _settings_from(_container_env(api, objects), monkeypatch)
    (container,) = api["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["ops"] == settings.api.ops_port
    assert ports["http"] == settings.api.port
    ops = of_kind(objects, "Service")[f"{RELEASE}-api-ops"]
    assert ops["spec"]["publishNotReadyAddresses"] is True  # /readyz follows PostgreSQL
    assert ops["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]
    assert [p["targetPort"] for p in ops["spec"]["ports"]] == ["ops"]
    public = of_kind(objects, "Service")[f"{RELEASE}-api"]
    assert [p["targetPort"] for p in public["spec"]["ports"]] == ["http"]
    policy = of_kind(objects, "NetworkPolicy")[f"{RELEASE}-api"]
    rules = {r["ports"][0]["port"]: r.get("from") for r in policy["spec"]["ingress"]}
    assert rules["http"] is None  # the API's clients, from anywhere
    assert rules["ops"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}}
    ]
    (auth,) = of_kind(objects, "TriggerAuthentication").values()
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "token", "name": "celeriac-env", "key": "CELERIAC_API__METRICS_TOKEN"}
    ]


def test_each_pod_gets_only_the_secrets_its_process_reads(objects: list[dict[str, Any]]) -> None:
    api = _secret_keys(of_kind(objects, "Deployment")[f"{RELEASE}-api"])
    assert {k for k, required in api.items() if required} == set(SECRET_ENV)
    for deployment in [
        *workers(objects).values(),
        of_kind(objects, "Deployment")[f"{RELEASE}-beat"],
    ]:
        keys = _secret_keys(deployment)
        assert {k for k, required in keys.items() if required} == {
            "CELERIAC_DATABASE_URL",
            "CELERIAC_BROKER_URL",
            "CELERIAC_REDIS_URL",
        }
        assert not {
            "CELERIAC_AUTH__JWT_HS256_SECRET",
            "CELERIAC_AUTH__API_KEY_PEPPER",
            "CELERIAC_API__METRICS_TOKEN",
        } & set(keys)


EXTERNAL = {
    "secrets": {"existingSecret": ""},
    "externalSecrets": {
        "enabled": True,
        "databaseSecret": "celeriac/prod/app-db",
        "keys": {
            name: {"key": f"celeriac/prod/{name.lower()}"}
            for name in SECRET_ENV
            if name != "CELERIAC_DATABASE_URL"
        },
    },
}


def test_external_secrets_give_each_component_its_own_secret_and_restart_on_rotation() -> None:
    objects = render(EXTERNAL)
    external = of_kind(objects, "ExternalSecret")
    assert set(external) == {f"{RELEASE}-api", f"{RELEASE}-workers", f"{RELEASE}-migrate"}
    assert of_kind(objects, "Secret") == {}
    for name, obj in external.items():
        assert obj["apiVersion"] == "external-secrets.io/v1"
        assert obj["spec"]["target"]["name"] == name
        # The hook is recreated at each upgrade: the Secret must outlive it.
        assert obj["spec"]["target"]["creationPolicy"] == "Orphan"
        assert "pre-install" in obj["metadata"]["annotations"]["helm.sh/hook"]  # before migrate
        url = obj["spec"]["target"]["template"]["data"]["CELERIAC_DATABASE_URL"]
        assert "{{ .db_password | urlquery }}" in url
        assert "sslmode=verify-full" in url
    fetched = {
        o["metadata"]["name"]: {d["secretKey"] for d in o["spec"]["data"]}
        for o in external.values()
    }
    assert "CELERIAC_AUTH__API_KEY_PEPPER" in fetched[f"{RELEASE}-api"]
    assert "CELERIAC_AUTH__API_KEY_PEPPER" not in fetched[f"{RELEASE}-workers"]
    db_fields = ("username", "password", "host", "port", "dbname")
    assert fetched[f"{RELEASE}-migrate"] == {f"db_{f}" for f in db_fields}
    for pool, deployment in workers(objects).items():
        annotations = deployment["metadata"]["annotations"]
        assert annotations["secret.reloader.stakater.com/reload"] == f"{RELEASE}-workers", pool
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert {
            e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e
        } == {f"{RELEASE}-workers"}
    (auth,) = of_kind(objects, "TriggerAuthentication").values()
    assert auth["spec"]["secretTargetRef"][0]["name"] == f"{RELEASE}-api"
    for obj in objects:
        if not obj["apiVersion"].startswith(("keda.sh/", "external-")):
            kubernetes_validate.validate(obj, KUBE_VERSIONS[0], strict=True)


def test_external_secrets_refuse_a_missing_key() -> None:
    values = copy.deepcopy(EXTERNAL)
    del values["externalSecrets"]["keys"]["CELERIAC_AUTH__JWT_HS256_SECRET"]
    with pytest.raises(
        helm.HelmError, match=r"externalSecrets\.keys\.CELERIAC_AUTH__JWT_HS256_SECRET"
    ):
        render(values)
