# The operations baseline beside the data stores: a cache Redis of its own, the image
# registry, and (values-gated) RDS Proxy in front of PostgreSQL.

locals {
  # What the pods connect to: RDS Proxy when it is on, else the instance.
  db_client_host = var.db_proxy_enabled ? aws_db_proxy.this[0].endpoint : aws_db_instance.this.address
}

# --- cache Redis ------------------------------------------------------------------------------
# CELERIAC_REDIS_URL (cache-aside blobs, auth-cache generation, rate limits, idempotency
# records, monthly job counters, Celery results) apart from the broker: the broker must
# never evict (noeviction), and a cache that fills must not stop the broker taking tasks.
# volatile-lru evicts only keys that expire anyway (every cache and counter key has a TTL);
# the few without one (the auth-cache generation) are never evicted (docs/operations.md).

resource "aws_elasticache_parameter_group" "cache" {
  name   = "${var.name}-cache-redis7"
  family = "redis7"

  parameter {
    name  = "maxmemory-policy"
    value = "volatile-lru"
  }
}

resource "random_password" "cache_redis_auth" {
  length  = 64
  special = false
}

resource "aws_elasticache_replication_group" "cache" {
  replication_group_id = "${var.name}-cache"
  description          = "${var.name} cache, rate limits, idempotency and results"
  engine               = "redis"
  engine_version       = var.redis_engine_version
  node_type            = var.cache_redis_node_type
  port                 = 6379

  num_cache_clusters         = 2
  automatic_failover_enabled = true
  multi_az_enabled           = true

  parameter_group_name = aws_elasticache_parameter_group.cache.name
  subnet_group_name    = aws_elasticache_subnet_group.this.name
  security_group_ids   = [aws_security_group.redis.id]

  at_rest_encryption_enabled = true
  kms_key_id                 = aws_kms_key.data.arn
  transit_encryption_enabled = true
  auth_token                 = random_password.cache_redis_auth.result

  snapshot_retention_limit   = 1
  auto_minor_version_upgrade = true
}

# --- ECR ----------------------------------------------------------------------------------

resource "aws_ecr_repository" "celeriac" {
  name = var.name
  # Release tags are immutable: the chart's IfNotPresent pull policy relies on it.
  image_tag_mutability = "IMMUTABLE"

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = aws_kms_key.data.arn
  }
}

resource "aws_ecr_lifecycle_policy" "celeriac" {
  repository = aws_ecr_repository.celeriac.name
  policy = jsonencode({
    rules = [{
      rulePriority = 1
      description  = "Untagged images (superseded builds) expire"
      selection = {
        tagStatus   = "untagged"
        countType   = "sinceImagePushed"
        countUnit   = "days"
        countNumber = var.ecr_keep_untagged_days
      }
      action = { type = "expire" }
    }]
  })
}

# --- RDS Proxy (db_proxy_enabled) -----------------------------------------------------------
# Every Celeriac process keeps a SQLAlchemy pool of 20 (+20 overflow); at the chart's
# maximum replicas that is more clients than PostgreSQL's max_connections. The proxy
# multiplexes them onto at most db_proxy_max_connections_percent of it (the numbers are in
# docs/operations.md).

resource "aws_security_group" "db_proxy" {
  # checkov:skip=CKV2_AWS_5:It is attached to aws_db_proxy.this (vpc_security_group_ids); both exist only with db_proxy_enabled, which checkov's graph does not follow through count.
  count       = var.db_proxy_enabled ? 1 : 0
  name        = "${var.name}-db-proxy"
  description = "${var.name} RDS Proxy: reachable from the EKS cluster's pods only"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "db_proxy_from_eks" {
  count                        = var.db_proxy_enabled ? 1 : 0
  security_group_id            = aws_security_group.db_proxy[0].id
  referenced_security_group_id = local.eks_security_group_id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  description                  = "PostgreSQL (through RDS Proxy) from the EKS cluster security group"
}

resource "aws_vpc_security_group_egress_rule" "db_proxy_to_db" {
  count                        = var.db_proxy_enabled ? 1 : 0
  security_group_id            = aws_security_group.db_proxy[0].id
  referenced_security_group_id = aws_security_group.db.id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  description                  = "RDS Proxy to PostgreSQL"
}

resource "aws_vpc_security_group_ingress_rule" "db_from_proxy" {
  count                        = var.db_proxy_enabled ? 1 : 0
  security_group_id            = aws_security_group.db.id
  referenced_security_group_id = aws_security_group.db_proxy[0].id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  description                  = "PostgreSQL from RDS Proxy"
}

data "aws_iam_policy_document" "db_proxy_trust" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["rds.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "db_proxy" {
  count              = var.db_proxy_enabled ? 1 : 0
  name               = "${var.name}-db-proxy"
  assume_role_policy = data.aws_iam_policy_document.db_proxy_trust.json
}

data "aws_iam_policy_document" "db_proxy" {
  statement {
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [aws_secretsmanager_secret.app_db.arn]
  }

  statement {
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.data.arn]
  }
}

resource "aws_iam_role_policy" "db_proxy" {
  count  = var.db_proxy_enabled ? 1 : 0
  name   = "read-app-db-secret"
  role   = aws_iam_role.db_proxy[0].id
  policy = data.aws_iam_policy_document.db_proxy.json
}

resource "aws_db_proxy" "this" {
  count                  = var.db_proxy_enabled ? 1 : 0
  name                   = var.name
  engine_family          = "POSTGRESQL"
  role_arn               = aws_iam_role.db_proxy[0].arn
  vpc_subnet_ids         = var.private_subnet_ids
  vpc_security_group_ids = [aws_security_group.db_proxy[0].id]
  require_tls            = true
  idle_client_timeout    = 1800
  debug_logging          = false

  auth {
    auth_scheme = "SECRETS"
    secret_arn  = aws_secretsmanager_secret.app_db.arn
    iam_auth    = "DISABLED"
  }
}

resource "aws_db_proxy_default_target_group" "this" {
  count         = var.db_proxy_enabled ? 1 : 0
  db_proxy_name = aws_db_proxy.this[0].name

  connection_pool_config {
    max_connections_percent      = var.db_proxy_max_connections_percent
    max_idle_connections_percent = 50
    connection_borrow_timeout    = 30
  }
}

resource "aws_db_proxy_target" "this" {
  count                  = var.db_proxy_enabled ? 1 : 0
  db_proxy_name          = aws_db_proxy.this[0].name
  target_group_name      = aws_db_proxy_default_target_group.this[0].name
  db_instance_identifier = aws_db_instance.this.identifier
}
