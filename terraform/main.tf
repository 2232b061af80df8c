data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

data "aws_eks_cluster" "this" {
  name = var.eks_cluster_name
}

data "aws_eks_cluster_auth" "this" {
  name = var.eks_cluster_name
}

data "aws_iam_openid_connect_provider" "eks" {
  url = data.aws_eks_cluster.this.identity[0].oidc[0].issuer
}

locals {
  tags = merge(var.tags, {
    "app.kubernetes.io/part-of" = "celeriac"
    environment                 = var.environment
  })
  account   = data.aws_caller_identity.current.account_id
  partition = data.aws_partition.current.partition
  # The cluster security group is on every managed node and Fargate pod: the pods reach
  # the database and Redis from it.
  eks_security_group_id = data.aws_eks_cluster.this.vpc_config[0].cluster_security_group_id
  oidc_issuer_host      = replace(data.aws_eks_cluster.this.identity[0].oidc[0].issuer, "https://", "")
}

# Encrypts the platform's own data at rest: RDS, its Performance Insights, ElastiCache, the
# blob bucket and the RDS master password secret. Tenant keys are separate (iam.tf).
resource "aws_kms_key" "data" {
  description             = "${var.name}: data at rest (RDS, ElastiCache, S3)"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.data_key.json
}

resource "aws_kms_alias" "data" {
  name          = "alias/${var.name}/data"
  target_key_id = aws_kms_key.data.key_id
}

data "aws_iam_policy_document" "data_key" {
  # checkov:skip=CKV_AWS_109:A key policy's "*" resource is this key; the account's IAM policies decide who else uses it (the default key policy).
  # checkov:skip=CKV_AWS_111:A key policy's "*" resource is this key; the account's IAM policies decide who else uses it (the default key policy).
  # checkov:skip=CKV_AWS_356:A key policy's "*" resource is this key; the account's IAM policies decide who else uses it (the default key policy).
  statement {
    sid       = "AccountAdministersThroughIAM"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account}:root"]
    }
  }
}
