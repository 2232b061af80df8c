output "service_account_role_arn" {
  description = "IRSA role: set serviceAccount.annotations.\"eks.amazonaws.com/role-arn\" in the chart."
  value       = aws_iam_role.platform.arn
}

output "blob_bucket" {
  description = "config.blob.s3Bucket in the chart."
  value       = aws_s3_bucket.blobs.bucket
}

output "database_endpoint" {
  description = "host:port of PostgreSQL, or of RDS Proxy with db_proxy_enabled (CELERIAC_DATABASE_URL=postgresql+psycopg://<app role>:<password>@<this>/celeriac?sslmode=verify-full)."
  value       = "${local.db_client_host}:${aws_db_instance.this.port}"
}

output "app_db_secret_name" {
  description = "Secrets Manager secret of the application role (RDS format): externalSecrets.databaseSecret in the chart."
  value       = aws_secretsmanager_secret.app_db.name
}

output "external_secrets_role_arn" {
  description = "IRSA role of the External Secrets operator: annotate its ServiceAccount with it."
  value       = aws_iam_role.external_secrets.arn
}

output "ecr_repository_url" {
  description = "Where `make image` pushes (image.repository in the chart)."
  value       = aws_ecr_repository.celeriac.repository_url
}

output "alarm_topic_arn" {
  description = "SNS topic every CloudWatch alarm notifies: subscribe the on-call's pager to it."
  value       = aws_sns_topic.alarms.arn
}

output "cache_redis_primary_endpoint" {
  description = "Primary endpoint of the cache Redis (CELERIAC_REDIS_URL)."
  value       = aws_elasticache_replication_group.cache.primary_endpoint_address
}

output "database_master_secret_arn" {
  description = "Secrets Manager secret holding the RDS master password (rotated by RDS)."
  value       = aws_db_instance.this.master_user_secret[0].secret_arn
}

output "redis_primary_endpoint" {
  description = "Primary endpoint of the broker Redis (CELERIAC_BROKER_URL=rediss://:<auth token>@<this>:6379/0?ssl_cert_reqs=required)."
  value       = aws_elasticache_replication_group.this.primary_endpoint_address
}

output "redis_auth_token" {
  description = "ElastiCache AUTH token, for the chart's Secret."
  value       = random_password.redis_auth.result
  sensitive   = true
}

output "data_kms_key_arn" {
  description = "The platform's at-rest key (RDS, ElastiCache, S3)."
  value       = aws_kms_key.data.arn
}

output "chart_values" {
  description = "Chart values that come from this infrastructure (helm install -f)."
  value = yamlencode({
    serviceAccount = {
      name        = var.service_account_name
      annotations = { "eks.amazonaws.com/role-arn" = aws_iam_role.platform.arn }
    }
    config = {
      blob = { backend = "s3", s3Bucket = aws_s3_bucket.blobs.bucket, region = var.region }
      keys = { provider = "kms" }
    }
    image = { repository = aws_ecr_repository.celeriac.repository_url }
    externalSecrets = {
      enabled        = true
      databaseSecret = aws_secretsmanager_secret.app_db.name
      keys = {
        CELERIAC_BROKER_URL             = { key = aws_secretsmanager_secret.redis.name, property = "broker_url" }
        CELERIAC_REDIS_URL              = { key = aws_secretsmanager_secret.redis.name, property = "cache_url" }
        CELERIAC_AUTH__JWT_HS256_SECRET = { key = aws_secretsmanager_secret.api.name, property = "jwt_hs256_secret" }
        CELERIAC_AUTH__API_KEY_PEPPER   = { key = aws_secretsmanager_secret.api.name, property = "api_key_pepper" }
        CELERIAC_API__METRICS_TOKEN     = { key = aws_secretsmanager_secret.api.name, property = "metrics_token" }
      }
    }
  })
}
