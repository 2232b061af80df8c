output "service_account_role_arn" {
  description = "IRSA role: set serviceAccount.annotations.\"eks.amazonaws.com/role-arn\" in the chart."
  value       = aws_iam_role.platform.arn
}

output "blob_bucket" {
  description = "config.blob.s3Bucket in the chart."
  value       = aws_s3_bucket.blobs.bucket
}

output "database_endpoint" {
  description = "host:port of PostgreSQL (CELERIAC_DATABASE_URL=postgresql+psycopg://celeriac:<password>@<this>/celeriac?sslmode=require)."
  value       = aws_db_instance.this.endpoint
}

output "database_master_secret_arn" {
  description = "Secrets Manager secret holding the RDS master password (rotated by RDS)."
  value       = aws_db_instance.this.master_user_secret[0].secret_arn
}

output "redis_primary_endpoint" {
  description = "Primary endpoint (CELERIAC_BROKER_URL=rediss://:<auth token>@<this>:6379/0?ssl_cert_reqs=required; CELERIAC_REDIS_URL the same with /1)."
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
  })
}
