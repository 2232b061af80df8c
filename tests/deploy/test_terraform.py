"""The Terraform under terraform/: every file parses (python-hcl2), every reference points at
something declared, the resources hold the properties the platform relies on, and checkov
finds nothing that is not skipped with a reason. There is no terraform binary here, so
provider schemas are not checked: `terraform validate` is the operator's first step."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import hcl2
import helm_python as helm
import pytest
import yaml

from celeriac.platform.crypto import keys

from deploy_support import REPO, failures, run_checkov, unjustified_skips

TERRAFORM = REPO / "terraform"
PARSE = hcl2.SerializationOptions(
    with_comments=False, explicit_blocks=False, strip_string_quotes=True
)
BLOCKS = ("resource", "data", "variable", "output", "locals", "provider", "terraform")


class Module:
    """The root module's blocks, merged across its files."""

    def __init__(self) -> None:
        self.files = sorted(TERRAFORM.glob("*.tf"))
        self.resources: dict[tuple[str, str], dict[str, Any]] = {}
        self.data: dict[tuple[str, str], dict[str, Any]] = {}
        self.variables: dict[str, dict[str, Any]] = {}
        self.outputs: dict[str, dict[str, Any]] = {}
        self.locals: dict[str, Any] = {}
        self.text = ""
        for path in self.files:
            text = path.read_text()
            self.text += text
            parsed = hcl2.loads(text, serialization_options=PARSE)
            assert set(parsed) <= set(BLOCKS), (path.name, set(parsed))
            for kind, table in (("resource", self.resources), ("data", self.data)):
                for block in parsed.get(kind, []):
                    for type_, named in block.items():
                        for name, body in named.items():
                            assert (type_, name) not in table, (kind, type_, name)
                            table[(type_, name)] = body
            for block in parsed.get("variable", []):
                self.variables |= block
            for block in parsed.get("output", []):
                self.outputs |= block
            for block in parsed.get("locals", []):
                self.locals |= block

    def resolve(self, value: str) -> str:
        """``value`` with ``${var.x}`` (defaults) and string ``${local.x}`` filled in; other
        expressions (attributes known only after apply) are left as they are."""
        for _ in range(5):
            value = re.sub(
                r"\$\{var\.(\w+)\}",
                lambda m: str(self.variables[m[1]].get("default", m[0])),
                value,
            )
            value = re.sub(
                r"\$\{local\.(\w+)\}",
                lambda m: self.locals[m[1]] if isinstance(self.locals[m[1]], str) else m[0],
                value,
            )
        return value


@pytest.fixture(scope="module")
def module() -> Module:
    return Module()


def statements(module: Module, document: str) -> list[dict[str, Any]]:
    return list(module.data[("aws_iam_policy_document", document)]["statement"])


def conditions(statement: dict[str, Any]) -> Iterator[tuple[str, str, list[str]]]:
    for condition in statement.get("condition", []):
        yield condition["test"], condition["variable"], condition["values"]


# --- the module hangs together ------------------------------------------------------------


def test_every_file_parses_and_declares_its_inputs_and_outputs(module: Module) -> None:
    assert {p.name for p in module.files} >= {"versions.tf", "variables.tf", "outputs.tf"}
    for name, variable in module.variables.items():
        assert variable.get("description"), name
        assert variable.get("type"), name
    for name, output in module.outputs.items():
        assert output.get("description"), name


def test_every_reference_points_at_a_declaration(module: Module) -> None:
    text = re.sub(r"#.*", "", module.text)  # comments name things in prose
    for name in set(re.findall(r"\bvar\.(\w+)", text)):
        assert name in module.variables, f"var.{name}"
    for name in set(re.findall(r"\blocal\.(\w+)", text)):
        assert name in module.locals, f"local.{name}"
    for type_, name in set(re.findall(r"\bdata\.(\w+)\.(\w+)", text)):
        assert (type_, name) in module.data, f"data.{type_}.{name}"
    for type_, name in set(
        re.findall(r"(?<![.\w])((?:aws|random|helm|postgresql)_\w+)\.(\w+)", text)
    ):
        assert (type_, name) in module.resources, f"{type_}.{name}"
    declared = set(re.findall(r"\bvariable\s+\"(\w+)\"", text))
    unused = declared - set(re.findall(r"\bvar\.(\w+)", text))
    assert unused == set()


# --- what the platform relies on ----------------------------------------------------------


def test_postgresql_15_private_encrypted_and_tls_only(module: Module) -> None:
    db = module.resources[("aws_db_instance", "this")]
    assert db["engine"] == "postgres"
    assert str(db["engine_version"]).split(".")[0] == "15"
    assert db["storage_encrypted"] is True
    assert db["publicly_accessible"] is False
    assert db["multi_az"] is True
    assert db["deletion_protection"] is True
    assert db["manage_master_user_password"] is True
    assert "password" not in db
    params = module.resources[("aws_db_parameter_group", "this")]
    assert params["family"] == "postgres15"
    assert {"name": "rds.force_ssl", "value": "1"} in params["parameter"]


def test_redis_is_one_shard_with_a_replica_tls_and_an_auth_token(module: Module) -> None:
    redis = module.resources[("aws_elasticache_replication_group", "this")]
    assert redis["engine"] == "redis"
    # Cluster mode disabled: kombu cannot use Redis Cluster (CROSSSLOT), and the fair
    # dispatcher's Lua script touches keys of many tenants.
    assert redis["num_cache_clusters"] == 2
    assert "num_node_groups" not in redis
    assert "replicas_per_node_group" not in redis
    assert redis["automatic_failover_enabled"] is True
    assert redis["multi_az_enabled"] is True
    assert redis["transit_encryption_enabled"] is True
    assert redis["at_rest_encryption_enabled"] is True
    assert redis["auth_token"] == "${random_password.redis_auth.result}"
    assert module.resources[("random_password", "redis_auth")]["special"] is False  # URL-safe
    params = module.resources[("aws_elasticache_parameter_group", "this")]
    assert params["family"].startswith("redis")
    settings = {p["name"]: p["value"] for p in params["parameter"]}
    assert settings["maxmemory-policy"] == "noeviction"
    assert settings.get("cluster-enabled", "no") == "no"


def test_blob_bucket_is_versioned_kms_encrypted_private_and_expires_old_versions(
    module: Module,
) -> None:
    r = module.resources
    assert r[("aws_s3_bucket_versioning", "blobs")]["versioning_configuration"][0]["status"] == (
        "Enabled"
    )
    (rule,) = r[("aws_s3_bucket_server_side_encryption_configuration", "blobs")]["rule"]
    (default,) = rule["apply_server_side_encryption_by_default"]
    assert default["sse_algorithm"] == "aws:kms"
    assert default["kms_master_key_id"]
    block = r[("aws_s3_bucket_public_access_block", "blobs")]
    for setting in (
        "block_public_acls",
        "block_public_policy",
        "ignore_public_acls",
        "restrict_public_buckets",
    ):
        assert block[setting] is True, setting
    (lifecycle,) = r[("aws_s3_bucket_lifecycle_configuration", "blobs")]["rule"]
    assert lifecycle["status"] == "Enabled"
    assert lifecycle["noncurrent_version_expiration"]
    assert lifecycle["abort_incomplete_multipart_upload"]
    (deny,) = statements(module, "blobs_bucket")
    assert deny["effect"] == "Deny"
    assert ("Bool", "aws:SecureTransport", ["false"]) in list(conditions(deny))


def test_tenant_key_permissions_are_scoped_by_alias_prefix_and_tenant_tag(
    module: Module,
) -> None:
    prefix = module.variables["tenant_key_alias_prefix"]["default"]
    assert prefix == "alias/celeriac/tenant/"
    # The key providers (celeriac.platform.crypto.keys, .kms) document this alias as theirs.
    assert f"{prefix}<tenant_id>" in (keys.__doc__ or "")
    tag = module.variables["tenant_tag_key"]["default"]
    granted: dict[str, list[dict[str, Any]]] = {}
    for statement in statements(module, "tenant_keys"):
        assert statement.get("effect", "Allow") == "Allow"
        for action in statement["actions"]:
            granted.setdefault(action, []).append(statement)
    assert set(granted) >= {
        "kms:CreateKey",
        "kms:CreateAlias",
        "kms:GenerateDataKey",
        "kms:Decrypt",
        "kms:DisableKey",
        "kms:ScheduleKeyDeletion",
    }
    assert not [a for a in granted if a.endswith("*")]
    for action, found in granted.items():
        for statement in found:
            resources = [module.resolve(r) for r in statement["resources"]]
            checks = {
                (test, module.resolve(var)): values for test, var, values in conditions(statement)
            }
            if action == "kms:CreateKey":  # no resource exists before the key
                assert resources == ["*"]
                assert checks[("Null", f"aws:RequestTag/{tag}")] == ["false"]
                assert [
                    module.resolve(v) for v in checks[("ForAllValues:StringEquals", "aws:TagKeys")]
                ] == [tag]
            elif any(":alias/" in r for r in resources):
                (alias,) = resources
                assert alias.startswith("arn:")
                assert alias.endswith(
                    f":kms:${{var.region}}:"
                    "${data.aws_caller_identity.current.account_id}:"
                    f"{prefix}*"
                )
            else:
                assert all(r.endswith(":key/*") for r in resources), (action, resources)
                tagged = checks.get(("Null", f"aws:ResourceTag/{tag}")) == ["false"]
                requested = checks.get(("Null", f"aws:RequestTag/{tag}")) == ["false"]
                assert tagged or requested, action
            if action in {
                "kms:GenerateDataKey",
                "kms:Decrypt",
                "kms:DisableKey",
                "kms:ScheduleKeyDeletion",
            }:
                aliases = checks[("ForAnyValue:StringLike", "kms:ResourceAliases")]
                assert [module.resolve(a) for a in aliases] == [f"{prefix}*"]


def test_irsa_trusts_exactly_the_charts_service_account(module: Module) -> None:
    (trust,) = statements(module, "irsa_trust")
    assert trust["actions"] == ["sts:AssumeRoleWithWebIdentity"]
    checks = {var: values for _, var, values in conditions(trust)}
    namespace = module.variables["kubernetes_namespace"]["default"]
    account = module.variables["service_account_name"]["default"]
    (subject,) = checks["${local.oidc_issuer_host}:sub"]
    assert module.resolve(subject) == f"system:serviceaccount:{namespace}:{account}"
    assert checks["${local.oidc_issuer_host}:aud"] == ["sts.amazonaws.com"]
    # The chart, installed as release "celeriac" in that namespace, names its account so.
    with helm.Chart.load(REPO / "helm" / "celeriac") as chart:
        rendered = chart.render(
            {"secrets": {"existingSecret": "s"}, "config": {"blob": {"s3Bucket": "b"}}},
            name="celeriac",
            namespace=namespace,
        )
    (sa,) = [d for d in yaml.safe_load_all(rendered["celeriac/templates/serviceaccount.yaml"]) if d]
    assert (sa["metadata"]["namespace"], sa["metadata"]["name"]) == (namespace, account)


def test_keda_is_installed_at_the_version_the_chart_is_validated_against(
    module: Module,
) -> None:
    keda = module.resources[("helm_release", "keda")]
    assert keda["chart"] == "keda"
    assert "kedacore" in keda["repository"]
    version = module.variables["keda_chart_version"]["default"]
    assert keda["version"] == "${var.keda_chart_version}"
    assert version.startswith("2.20.")


# --- the operations baseline --------------------------------------------------------------


def test_the_platform_connects_as_an_application_role_whose_secret_the_chart_reads(
    module: Module,
) -> None:
    role = module.variables["app_db_role"]["default"]
    master = module.resources[("aws_db_instance", "this")]["username"]
    assert role != master
    secret = module.resources[("aws_secretsmanager_secret_version", "app_db")]["secret_string"]
    fields = set(re.findall(r"(\w+)\s*=", secret))
    # The chart's ExternalSecret builds CELERIAC_DATABASE_URL from these fields.
    template = (REPO / "helm" / "celeriac" / "templates" / "externalsecrets.yaml").read_text()
    (listed,) = re.findall(r'range \$field := list ((?:"\w+" ?)+)', template)
    assert set(re.findall(r'"(\w+)"', listed)) <= fields
    assert "username = var.app_db_role" in secret
    assert module.resources[("postgresql_role", "app")]["name"] == "${var.app_db_role}"
    grants = {
        module.resources[("postgresql_grant", n)]["object_type"]
        for n in ("app_database", "app_schema")
    }
    assert grants == {"database", "schema"}
    # Rotation with alternating users: the old password still works until the next
    # rotation, while External Secrets and Reloader roll the pods onto the new one.
    assert "multi-user" in module.variables["app_db_rotation_lambda_arn"]["description"]


def test_the_cache_has_its_own_redis_that_may_evict_what_expires(module: Module) -> None:
    cache = module.resources[("aws_elasticache_replication_group", "cache")]
    broker = module.resources[("aws_elasticache_replication_group", "this")]
    assert cache["replication_group_id"] != broker["replication_group_id"]
    assert cache["transit_encryption_enabled"] is True
    assert cache["auth_token"]
    params = module.resources[("aws_elasticache_parameter_group", "cache")]["parameter"]
    assert {p["name"]: p["value"] for p in params}["maxmemory-policy"] == "volatile-lru"
    urls = module.resources[("aws_secretsmanager_secret_version", "redis")]["secret_string"]
    assert "aws_elasticache_replication_group.cache.primary_endpoint_address" in urls


def test_cloudwatch_alarms_cover_the_database_and_both_redis(module: Module) -> None:
    alarms = {
        name: body
        for (type_, name), body in module.resources.items()
        if type_ == "aws_cloudwatch_metric_alarm"
    }
    metrics = {(a["namespace"], a["metric_name"]) for a in alarms.values()}
    assert metrics == {
        ("AWS/RDS", "CPUUtilization"),
        ("AWS/RDS", "FreeStorageSpace"),
        ("AWS/RDS", "DatabaseConnections"),
        ("AWS/ElastiCache", "DatabaseMemoryUsagePercentage"),
        ("AWS/ElastiCache", "Evictions"),
        ("AWS/ElastiCache", "ReplicationLag"),
    }
    for name, alarm in alarms.items():
        assert alarm["alarm_actions"] == "${local.alarm_actions}", name
        if alarm["namespace"] == "AWS/ElastiCache":
            assert alarm["for_each"] == "${local.redis_nodes}", name  # every node of both
    assert module.resources[("aws_sns_topic", "alarms")]["kms_master_key_id"]


def test_state_lives_in_s3_with_a_dynamodb_lock(module: Module) -> None:
    assert re.search(r'backend\s+"s3"', module.text)
    state = hcl2.loads((TERRAFORM / "state" / "main.tf").read_text(), serialization_options=PARSE)
    resources = {
        (t, n): body
        for block in state["resource"]
        for t, named in block.items()
        for n, body in named.items()
    }
    versioning = resources[("aws_s3_bucket_versioning", "state")]["versioning_configuration"]
    assert versioning[0]["status"] == "Enabled"
    assert ("aws_s3_bucket_public_access_block", "state") in resources
    locks = resources[("aws_dynamodb_table", "locks")]
    assert locks["hash_key"] == "LockID"
    assert locks["point_in_time_recovery"][0]["enabled"]


def test_ecr_and_the_optional_rds_proxy(module: Module) -> None:
    ecr = module.resources[("aws_ecr_repository", "celeriac")]
    assert ecr["image_tag_mutability"] == "IMMUTABLE"
    assert ecr["image_scanning_configuration"][0]["scan_on_push"] is True
    proxy = module.resources[("aws_db_proxy", "this")]
    assert proxy["count"] == "${var.db_proxy_enabled ? 1 : 0}"
    assert module.variables["db_proxy_enabled"]["default"] is False
    assert proxy["require_tls"] is True
    assert proxy["auth"][0]["secret_arn"] == "${aws_secretsmanager_secret.app_db.arn}"
    pool = module.resources[("aws_db_proxy_default_target_group", "this")]
    assert pool["connection_pool_config"][0]["max_connections_percent"] == (
        "${var.db_proxy_max_connections_percent}"
    )


# --- checkov ------------------------------------------------------------------------------


def test_checkov_finds_nothing_that_is_not_skipped_with_a_reason() -> None:
    report = run_checkov(TERRAFORM, "terraform")
    assert failures(report) == []
    assert unjustified_skips(report) == []
