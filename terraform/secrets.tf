# The platform's secrets in AWS Secrets Manager, one secret per concern, synced into the
# cluster by External Secrets (the chart's externalSecrets values; each component's Secret
# holds only the keys it reads). All are encrypted with the platform key.

# --- the application database role (not the master user) ----------------------------------

# Letters and digits only: no escaping in a URL (the chart's template url-encodes anyway).
resource "random_password" "app_db" {
  length  = 48
  special = false
}

resource "aws_secretsmanager_secret" "app_db" {
  name        = "${var.name}/app-db"
  description = "${var.name}: PostgreSQL application role (RDS secret format; rotated with alternating users)"
  kms_key_id  = aws_kms_key.data.arn
}

resource "aws_secretsmanager_secret_version" "app_db" {
  secret_id = aws_secretsmanager_secret.app_db.id
  # The RDS secret format that the rotation Lambda and the chart's URL template read. The
  # host is RDS Proxy's endpoint when it is enabled (operations.tf).
  secret_string = jsonencode({
    engine   = "postgres"
    username = var.app_db_role
    password = random_password.app_db.result
    host     = local.db_client_host
    port     = aws_db_instance.this.port
    dbname   = aws_db_instance.this.db_name
    # The multi-user rotation Lambda clones the role from the master user's secret.
    masterarn = aws_db_instance.this.master_user_secret[0].secret_arn
  })

  # After the first rotation the Lambda owns the value (it alternates username_clone).
  lifecycle {
    ignore_changes = [secret_string]
  }
}

resource "aws_secretsmanager_secret_rotation" "app_db" {
  count               = var.app_db_rotation_lambda_arn == null ? 0 : 1
  secret_id           = aws_secretsmanager_secret.app_db.id
  rotation_lambda_arn = var.app_db_rotation_lambda_arn

  rotation_rules {
    automatically_after_days = var.secret_rotation_days
  }
}

# The role itself, created over the master user's connection: it owns the schema (the
# migrations create every table) and nothing else in the instance.
data "aws_secretsmanager_secret_version" "master" {
  count     = var.manage_app_db_role ? 1 : 0
  secret_id = aws_db_instance.this.master_user_secret[0].secret_arn
}

provider "postgresql" {
  host            = aws_db_instance.this.address
  port            = aws_db_instance.this.port
  database        = aws_db_instance.this.db_name
  username        = aws_db_instance.this.username
  password        = var.manage_app_db_role ? jsondecode(data.aws_secretsmanager_secret_version.master[0].secret_string)["password"] : ""
  sslmode         = "verify-full"
  superuser       = false
  connect_timeout = 15
}

resource "postgresql_role" "app" {
  count    = var.manage_app_db_role ? 1 : 0
  name     = var.app_db_role
  login    = true
  password = random_password.app_db.result
  # The rotation Lambda changes the password afterwards.
  lifecycle {
    ignore_changes = [password]
  }
}

resource "postgresql_grant" "app_database" {
  count       = var.manage_app_db_role ? 1 : 0
  database    = aws_db_instance.this.db_name
  role        = postgresql_role.app[0].name
  object_type = "database"
  privileges  = ["CONNECT", "TEMPORARY"]
}

resource "postgresql_grant" "app_schema" {
  count       = var.manage_app_db_role ? 1 : 0
  database    = aws_db_instance.this.db_name
  schema      = "public"
  role        = postgresql_role.app[0].name
  object_type = "schema"
  privileges  = ["USAGE", "CREATE"]
}

# --- what the API signs and hashes with, and the backlog's bearer token ---------------------

resource "random_password" "jwt_hs256" {
  length  = 64
  special = false
}

resource "random_password" "api_key_pepper" {
  length  = 64
  special = false
}

resource "random_password" "metrics_token" {
  length  = 48
  special = false
}

resource "aws_secretsmanager_secret" "api" {
  # checkov:skip=CKV2_AWS_57:Rotating the JWT secret or the key pepper invalidates every token or API key at once; it is a planned operation (docs/operations.md), not a schedule.
  name        = "${var.name}/api"
  description = "${var.name}: the API's JWT secret, API key pepper and the backlog's bearer token"
  kms_key_id  = aws_kms_key.data.arn
}

resource "aws_secretsmanager_secret_version" "api" {
  secret_id = aws_secretsmanager_secret.api.id
  secret_string = jsonencode({
    jwt_hs256_secret = random_password.jwt_hs256.result
    api_key_pepper   = random_password.api_key_pepper.result
    metrics_token    = random_password.metrics_token.result
  })
}

# --- Redis URLs (the AUTH tokens are in them) -----------------------------------------------

resource "aws_secretsmanager_secret" "redis" {
  # checkov:skip=CKV2_AWS_57:ElastiCache AUTH tokens rotate through modify-replication-group (ROTATE then SET), not a Secrets Manager Lambda; docs/operations.md has the steps.
  name        = "${var.name}/redis"
  description = "${var.name}: broker and cache Redis URLs"
  kms_key_id  = aws_kms_key.data.arn
}

resource "aws_secretsmanager_secret_version" "redis" {
  secret_id = aws_secretsmanager_secret.redis.id
  secret_string = jsonencode({
    broker_url = "rediss://:${random_password.redis_auth.result}@${aws_elasticache_replication_group.this.primary_endpoint_address}:6379/0?ssl_cert_reqs=required"
    cache_url  = "rediss://:${random_password.cache_redis_auth.result}@${aws_elasticache_replication_group.cache.primary_endpoint_address}:6379/0?ssl_cert_reqs=required"
  })
}

# --- who may read them: the External Secrets operator (IRSA) --------------------------------

data "aws_iam_policy_document" "external_secrets_trust" {
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [data.aws_iam_openid_connect_provider.eks.arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer_host}:sub"
      values   = ["system:serviceaccount:${var.external_secrets_service_account}"]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer_host}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "external_secrets" {
  name               = "${var.name}-external-secrets"
  assume_role_policy = data.aws_iam_policy_document.external_secrets_trust.json
}

data "aws_iam_policy_document" "external_secrets" {
  statement {
    actions = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
    resources = [
      aws_secretsmanager_secret.app_db.arn,
      aws_secretsmanager_secret.api.arn,
      aws_secretsmanager_secret.redis.arn,
    ]
  }

  statement {
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.data.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "external_secrets" {
  name   = "read-platform-secrets"
  role   = aws_iam_role.external_secrets.id
  policy = data.aws_iam_policy_document.external_secrets.json
}
