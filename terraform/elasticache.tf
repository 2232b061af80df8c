# Redis: the Celery broker, the fair dispatcher's rings, cache, rate limits and results.
# Cluster mode disabled (one shard: a primary and a replica): kombu has no Redis Cluster
# support and the dispatcher's Lua script touches many keys (ADR 0001).

resource "aws_elasticache_subnet_group" "this" {
  name       = var.name
  subnet_ids = var.private_subnet_ids
}

resource "aws_security_group" "redis" {
  name        = "${var.name}-redis"
  description = "${var.name} Redis: reachable from the EKS cluster's pods only"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "redis_from_eks" {
  security_group_id            = aws_security_group.redis.id
  referenced_security_group_id = local.eks_security_group_id
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
  description                  = "Redis from the EKS cluster security group"
}

resource "aws_elasticache_parameter_group" "this" {
  name   = "${var.name}-redis7"
  family = "redis7"

  # An evicted _kombu.binding.* key breaks routing, and an evicted message is a lost task.
  parameter {
    name  = "maxmemory-policy"
    value = "noeviction"
  }
}

# Letters and digits only, so it needs no escaping in a rediss:// URL.
resource "random_password" "redis_auth" {
  length  = 64
  special = false
}

resource "aws_elasticache_replication_group" "this" {
  replication_group_id = var.name
  description          = "${var.name} broker, cache and results"
  engine               = "redis"
  engine_version       = var.redis_engine_version
  node_type            = var.redis_node_type
  port                 = 6379

  # One shard (no num_node_groups): a primary and one replica in another zone.
  num_cache_clusters         = 2
  automatic_failover_enabled = true
  multi_az_enabled           = true

  parameter_group_name = aws_elasticache_parameter_group.this.name
  subnet_group_name    = aws_elasticache_subnet_group.this.name
  security_group_ids   = [aws_security_group.redis.id]

  at_rest_encryption_enabled = true
  kms_key_id                 = aws_kms_key.data.arn
  transit_encryption_enabled = true
  auth_token                 = random_password.redis_auth.result

  snapshot_retention_limit   = 7
  auto_minor_version_upgrade = true
}
