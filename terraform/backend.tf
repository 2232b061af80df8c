# Remote state: S3 (versioned, encrypted) with a DynamoDB lock table, both made once by
# terraform/state/ (its README). The state holds the Redis AUTH tokens and the generated
# application secrets, so the bucket is encrypted with its own KMS key and private.
# Partial configuration: `terraform init -backend-config=backend.hcl` with the bucket,
# table, key and region that terraform/state/ outputs (backend.hcl.example).
terraform {
  backend "s3" {
    encrypt = true
  }
}
