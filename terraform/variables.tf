variable "region" {
  description = "AWS region of the deployment (the EKS cluster's region)."
  type        = string
}

variable "name" {
  description = "Name prefix of every resource."
  type        = string
  default     = "celeriac"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,30}$", var.name))
    error_message = "name: 3-31 lowercase letters, digits and '-', starting with a letter."
  }
}

variable "environment" {
  description = "Environment tag (production, staging, ...)."
  type        = string
  default     = "production"
}

variable "tags" {
  description = "Extra tags on every resource."
  type        = map(string)
  default     = {}
}

# --- the existing network and cluster -------------------------------------------------------

variable "vpc_id" {
  description = "VPC of the EKS cluster; the database and Redis are placed in it."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets (at least two availability zones) for RDS and ElastiCache."
  type        = list(string)

  validation {
    condition     = length(var.private_subnet_ids) >= 2
    error_message = "private_subnet_ids: at least two subnets, in different availability zones."
  }
}

variable "eks_cluster_name" {
  description = "Existing EKS cluster that runs the chart (its OIDC provider must exist for IRSA)."
  type        = string
}

variable "kubernetes_namespace" {
  description = "Namespace of the Helm release (the IRSA trust names it)."
  type        = string
  default     = "celeriac"
}

variable "service_account_name" {
  description = "ServiceAccount of the chart's pods (the chart's default is the release's full name)."
  type        = string
  default     = "celeriac"
}

# --- PostgreSQL -----------------------------------------------------------------------------

variable "db_instance_class" {
  description = "RDS instance class."
  type        = string
  default     = "db.r6g.large"
}

variable "db_allocated_storage_gb" {
  description = "Initial storage (GiB); storage autoscaling grows it up to db_max_allocated_storage_gb."
  type        = number
  default     = 100
}

variable "db_max_allocated_storage_gb" {
  description = "Upper bound of RDS storage autoscaling (GiB)."
  type        = number
  default     = 1000
}

variable "db_backup_retention_days" {
  description = "Automated backup retention (days)."
  type        = number
  default     = 14

  validation {
    condition     = var.db_backup_retention_days >= 7 && var.db_backup_retention_days <= 35
    error_message = "db_backup_retention_days: 7 to 35."
  }
}

# --- Redis ----------------------------------------------------------------------------------

variable "redis_node_type" {
  description = "ElastiCache node type (one primary and one replica of it)."
  type        = string
  default     = "cache.r7g.large"
}

variable "redis_engine_version" {
  description = "ElastiCache Redis OSS engine version."
  type        = string
  default     = "7.1"
}

# --- blobs and keys -------------------------------------------------------------------------

variable "blob_noncurrent_version_days" {
  description = "Days a replaced or deleted blob version is kept before it expires."
  type        = number
  default     = 30
}

variable "tenant_key_alias_prefix" {
  description = "Alias prefix of the per-tenant KMS keys the platform creates (alias/celeriac/tenant/<tenant_id>)."
  type        = string
  default     = "alias/celeriac/tenant/"

  validation {
    condition     = can(regex("^alias/[a-zA-Z0-9/_-]+/$", var.tenant_key_alias_prefix))
    error_message = "tenant_key_alias_prefix: starts with alias/ and ends with /."
  }
}

variable "tenant_tag_key" {
  description = "Tag the platform puts on every tenant key at CreateKey (its value is the tenant id)."
  type        = string
  default     = "celeriac:tenant"
}

# --- KEDA -----------------------------------------------------------------------------------

variable "keda_chart_version" {
  description = "KEDA Helm chart version; keep it on the KEDA release whose CRDs tests/deploy validates against (2.20)."
  type        = string
  default     = "2.20.2"
}

# --- operations baseline (operations.tf, secrets.tf, alarms.tf) ----------------------------

variable "app_db_role" {
  description = "PostgreSQL role the platform connects as (not the master user): it owns the schema and runs the migrations."
  type        = string
  default     = "celeriac_app"
}

variable "manage_app_db_role" {
  description = "Create the application role in PostgreSQL with the postgresql provider (Terraform must then reach the database, e.g. from a runner in the VPC); false: create it by hand as docs/operations.md shows."
  type        = bool
  default     = true
}

variable "app_db_rotation_lambda_arn" {
  description = "ARN of an RDS PostgreSQL multi-user (alternating users) rotation Lambda for the application role's secret; null: no automatic rotation."
  type        = string
  default     = null
}

variable "secret_rotation_days" {
  description = "Days between automatic rotations of the application role's password."
  type        = number
  default     = 30
}

variable "external_secrets_service_account" {
  description = "namespace:name of the External Secrets operator's ServiceAccount, trusted by the role that reads the platform's secrets."
  type        = string
  default     = "external-secrets:external-secrets"
}

variable "cache_redis_node_type" {
  description = "ElastiCache node type of the cache Redis (CELERIAC_REDIS_URL: cache, rate limits, idempotency, results)."
  type        = string
  default     = "cache.r7g.large"
}

variable "db_proxy_enabled" {
  description = "Put RDS Proxy between the pods and PostgreSQL (connection pooling; docs/operations.md has the pool sizes)."
  type        = bool
  default     = false
}

variable "db_proxy_max_connections_percent" {
  description = "Share of PostgreSQL's max_connections that RDS Proxy may open."
  type        = number
  default     = 80
}

variable "db_connections_alarm_threshold" {
  description = "Alarm when PostgreSQL has more connections than this (about 80 % of max_connections: 1,365 on db.r6g.large)."
  type        = number
  default     = 1100
}

variable "alarm_actions" {
  description = "Extra ARNs (SNS topics, incident tools) notified when an alarm fires, besides the topic this module creates."
  type        = list(string)
  default     = []
}

variable "ecr_keep_untagged_days" {
  description = "Days an untagged image stays in ECR before it expires."
  type        = number
  default     = 14
}
