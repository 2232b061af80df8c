# The remote state's home, made once per account before the root module (which then uses
# it: ../backend.tf). Applied with local state; keep that file (or import it afterwards).
#
#   terraform -chdir=terraform/state init && terraform -chdir=terraform/state apply
#   terraform -chdir=terraform/state output -raw backend_hcl > terraform/backend.hcl

terraform {
  required_version = ">= 1.6"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.70"
    }
  }
}

variable "region" {
  description = "AWS region of the state bucket and lock table."
  type        = string
}

variable "name" {
  description = "Name prefix (the same as the root module's)."
  type        = string
  default     = "celeriac"
}

variable "state_key" {
  description = "Object key of the root module's state in the bucket."
  type        = string
  default     = "celeriac/prod/terraform.tfstate"
}

provider "aws" {
  region = var.region
}

data "aws_caller_identity" "current" {}

resource "aws_kms_key" "state" {
  description             = "${var.name}: Terraform state"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.state_key.json
}

data "aws_iam_policy_document" "state_key" {
  # checkov:skip=CKV_AWS_109:A key policy's "*" resource is this key; the account's IAM policies decide who else uses it (the default key policy).
  # checkov:skip=CKV_AWS_111:A key policy's "*" resource is this key; the account's IAM policies decide who else uses it (the default key policy).
  # checkov:skip=CKV_AWS_356:A key policy's "*" resource is this key; the account's IAM policies decide who else uses it (the default key policy).
  statement {
    sid       = "AccountAdministersThroughIAM"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:aws:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
}

resource "aws_kms_alias" "state" {
  name          = "alias/${var.name}-terraform-state"
  target_key_id = aws_kms_key.state.key_id
}

resource "aws_s3_bucket" "state" {
  # checkov:skip=CKV_AWS_144:Cross-region replication of a state bucket doubles where the Redis AUTH tokens live; versioning and the account's backups cover its loss.
  # checkov:skip=CKV_AWS_18:Access logs of the state bucket would go to a bucket of their own per account; CloudTrail data events cover who read the state.
  # checkov:skip=CKV2_AWS_62:Nothing reacts to state writes; event notifications would have no consumer.
  bucket = "${var.name}-terraform-state-${data.aws_caller_identity.current.account_id}"
}

resource "aws_s3_bucket_versioning" "state" {
  bucket = aws_s3_bucket.state.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "state" {
  bucket = aws_s3_bucket.state.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.state.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_public_access_block" "state" {
  bucket                  = aws_s3_bucket.state.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_lifecycle_configuration" "state" {
  bucket = aws_s3_bucket.state.id
  rule {
    id     = "old-state-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = 90
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

data "aws_iam_policy_document" "state_bucket" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.state.arn, "${aws_s3_bucket.state.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "state" {
  bucket = aws_s3_bucket.state.id
  policy = data.aws_iam_policy_document.state_bucket.json
}

resource "aws_dynamodb_table" "locks" {
  name         = "${var.name}-terraform-locks"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "LockID"

  attribute {
    name = "LockID"
    type = "S"
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = aws_kms_key.state.arn
  }

  deletion_protection_enabled = true
}

output "backend_hcl" {
  description = "The root module's backend configuration (terraform init -backend-config=backend.hcl)."
  value       = <<-EOT
    bucket         = "${aws_s3_bucket.state.bucket}"
    key            = "${var.state_key}"
    region         = "${var.region}"
    dynamodb_table = "${aws_dynamodb_table.locks.name}"
    kms_key_id     = "${aws_kms_alias.state.name}"
  EOT
}
