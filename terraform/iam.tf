# IRSA: the chart's ServiceAccount (API, workers, beat) assumes this role. It may use the
# blob bucket, and create, use and destroy the per-tenant KMS keys: only keys carrying the
# tenant tag, and (once aliased) only keys aliased under tenant_key_alias_prefix.

locals {
  kms_key_arns       = "arn:${local.partition}:kms:${var.region}:${local.account}:key/*"
  tenant_alias_arns  = "arn:${local.partition}:kms:${var.region}:${local.account}:${var.tenant_key_alias_prefix}*"
  tenant_tag_request = "aws:RequestTag/${var.tenant_tag_key}"
  tenant_tag_present = "aws:ResourceTag/${var.tenant_tag_key}"
}

resource "aws_iam_role" "platform" {
  name               = "${var.name}-platform"
  description        = "${var.name} API, workers and beat (IRSA: ${var.kubernetes_namespace}/${var.service_account_name})"
  assume_role_policy = data.aws_iam_policy_document.irsa_trust.json
}

data "aws_iam_policy_document" "irsa_trust" {
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [data.aws_iam_openid_connect_provider.eks.arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer_host}:sub"
      values   = ["system:serviceaccount:${var.kubernetes_namespace}:${var.service_account_name}"]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer_host}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "tenant_keys" {
  name   = "tenant-keys"
  role   = aws_iam_role.platform.id
  policy = data.aws_iam_policy_document.tenant_keys.json
}

data "aws_iam_policy_document" "tenant_keys" {
  # CreateKey names no resource (the key does not exist yet): it is bounded by what the
  # request must carry instead, the tenant tag and a symmetric encryption key from KMS.
  # checkov:skip=CKV_AWS_356:kms:CreateKey cannot be scoped to a resource; the statement is bounded by request-tag, key-spec and key-usage conditions.
  # checkov:skip=CKV_AWS_111:kms:CreateKey cannot be scoped to a resource; the statement is bounded by request-tag, key-spec and key-usage conditions.
  statement {
    sid       = "CreateTenantKeys"
    actions   = ["kms:CreateKey"]
    resources = ["*"]

    condition {
      test     = "Null"
      variable = local.tenant_tag_request
      values   = ["false"]
    }

    condition {
      test     = "ForAllValues:StringEquals"
      variable = "aws:TagKeys"
      values   = [var.tenant_tag_key]
    }

    condition {
      test     = "StringEquals"
      variable = "kms:KeySpec"
      values   = ["SYMMETRIC_DEFAULT"]
    }

    condition {
      test     = "StringEquals"
      variable = "kms:KeyUsage"
      values   = ["ENCRYPT_DECRYPT"]
    }
  }

  # CreateKey's Tags parameter needs kms:TagResource; only the tenant tag may be written.
  statement {
    sid       = "TagTenantKeys"
    actions   = ["kms:TagResource"]
    resources = [local.kms_key_arns]

    condition {
      test     = "Null"
      variable = local.tenant_tag_request
      values   = ["false"]
    }

    condition {
      test     = "ForAllValues:StringEquals"
      variable = "aws:TagKeys"
      values   = [var.tenant_tag_key]
    }
  }

  # CreateAlias is authorized on the alias and on the key: aliases under the prefix only,
  # pointing at tenant-tagged keys only.
  statement {
    sid       = "AliasTenantKeysAlias"
    actions   = ["kms:CreateAlias"]
    resources = [local.tenant_alias_arns]
  }

  statement {
    sid       = "AliasTenantKeysKey"
    actions   = ["kms:CreateAlias"]
    resources = [local.kms_key_arns]

    condition {
      test     = "Null"
      variable = local.tenant_tag_present
      values   = ["false"]
    }
  }

  # Everything done with a tenant key afterwards: envelope encryption, rotation and
  # crypto-shredding (DisableKey, ScheduleKeyDeletion when a tenant is deleted).
  statement {
    sid = "UseTenantKeys"
    actions = [
      "kms:DescribeKey",
      "kms:GenerateDataKey",
      "kms:Decrypt",
      "kms:EnableKeyRotation",
      "kms:RotateKeyOnDemand",
      "kms:DisableKey",
      "kms:ScheduleKeyDeletion",
    ]
    resources = [local.kms_key_arns]

    condition {
      test     = "Null"
      variable = local.tenant_tag_present
      values   = ["false"]
    }

    condition {
      test     = "ForAnyValue:StringLike"
      variable = "kms:ResourceAliases"
      values   = ["${var.tenant_key_alias_prefix}*"]
    }
  }
}

resource "aws_iam_role_policy" "blobs" {
  name   = "blobs"
  role   = aws_iam_role.platform.id
  policy = data.aws_iam_policy_document.blobs_access.json
}

data "aws_iam_policy_document" "blobs_access" {
  statement {
    sid       = "ListBlobs"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.blobs.arn]
  }

  statement {
    sid       = "ReadWriteBlobs"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = ["${aws_s3_bucket.blobs.arn}/*"]
  }

  # SSE-KMS with the platform key, and only through S3.
  statement {
    sid       = "BucketEncryption"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = [aws_kms_key.data.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }
  }
}
