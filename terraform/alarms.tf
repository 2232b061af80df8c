# CloudWatch alarms on the data stores, sent to one SNS topic (subscribe your pager to it,
# or add targets with var.alarm_actions). What each means and what to do: docs/operations.md.

resource "aws_sns_topic" "alarms" {
  name              = "${var.name}-alarms"
  kms_master_key_id = aws_kms_alias.data.name
}

locals {
  alarm_actions = concat([aws_sns_topic.alarms.arn], var.alarm_actions)
  # ElastiCache names a replication group's nodes <group id>-001, -002.
  redis_nodes = {
    for pair in setproduct(["broker", "cache"], ["001", "002"]) :
    "${pair[0]}-${pair[1]}" => {
      group = pair[0] == "broker" ? aws_elasticache_replication_group.this.id : aws_elasticache_replication_group.cache.id
      node  = pair[1]
      role  = pair[0]
    }
  }
}

# --- PostgreSQL -------------------------------------------------------------------------------

resource "aws_cloudwatch_metric_alarm" "db_cpu" {
  alarm_name          = "${var.name}-db-cpu"
  alarm_description   = "PostgreSQL CPU above 80 % for 15 minutes"
  namespace           = "AWS/RDS"
  metric_name         = "CPUUtilization"
  dimensions          = { DBInstanceIdentifier = aws_db_instance.this.identifier }
  statistic           = "Average"
  period              = 300
  evaluation_periods  = 3
  threshold           = 80
  comparison_operator = "GreaterThanThreshold"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "db_storage" {
  alarm_name        = "${var.name}-db-free-storage"
  alarm_description = "PostgreSQL free storage below 10 % of the autoscaling maximum"
  namespace         = "AWS/RDS"
  metric_name       = "FreeStorageSpace"
  dimensions        = { DBInstanceIdentifier = aws_db_instance.this.identifier }
  statistic         = "Minimum"
  period            = 300
  # Storage autoscaling grows the volume until db_max_allocated_storage_gb; past that only
  # an operator can.
  evaluation_periods  = 1
  threshold           = var.db_max_allocated_storage_gb * 1073741824 * 0.1
  comparison_operator = "LessThanThreshold"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "db_connections" {
  alarm_name          = "${var.name}-db-connections"
  alarm_description   = "PostgreSQL connections near max_connections (scale-out will start failing)"
  namespace           = "AWS/RDS"
  metric_name         = "DatabaseConnections"
  dimensions          = { DBInstanceIdentifier = aws_db_instance.this.identifier }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 5
  threshold           = var.db_connections_alarm_threshold
  comparison_operator = "GreaterThanThreshold"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# --- Redis (broker and cache, each node) ------------------------------------------------------

resource "aws_cloudwatch_metric_alarm" "redis_memory" {
  for_each          = local.redis_nodes
  alarm_name        = "${var.name}-redis-${each.key}-memory"
  alarm_description = each.value.role == "broker" ? "Broker Redis memory above 80 %: at 100 % noeviction refuses writes and no new work can be published" : "Cache Redis memory above 90 %: volatile-lru is evicting cache and counter keys"
  namespace         = "AWS/ElastiCache"
  metric_name       = "DatabaseMemoryUsagePercentage"
  dimensions = {
    CacheClusterId = "${each.value.group}-${each.value.node}"
  }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 5
  threshold           = each.value.role == "broker" ? 80 : 90
  comparison_operator = "GreaterThanThreshold"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "redis_evictions" {
  for_each          = local.redis_nodes
  alarm_name        = "${var.name}-redis-${each.key}-evictions"
  alarm_description = each.value.role == "broker" ? "Broker Redis evicted keys: it must never (noeviction); check the parameter group" : "Cache Redis evicts more than 1,000 keys a minute: the cache is too small"
  namespace         = "AWS/ElastiCache"
  metric_name       = "Evictions"
  dimensions = {
    CacheClusterId = "${each.value.group}-${each.value.node}"
  }
  statistic           = "Sum"
  period              = 60
  evaluation_periods  = 5
  threshold           = each.value.role == "broker" ? 0 : 1000
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "redis_replication_lag" {
  for_each          = local.redis_nodes
  alarm_name        = "${var.name}-redis-${each.key}-replication-lag"
  alarm_description = "Redis replica more than 5 s behind its primary: a failover now would lose that much"
  namespace         = "AWS/ElastiCache"
  metric_name       = "ReplicationLag"
  dimensions = {
    CacheClusterId = "${each.value.group}-${each.value.node}"
  }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 3
  threshold           = 5
  comparison_operator = "GreaterThanThreshold"
  # Only the replica reports it; the primary's missing data is not a breach.
  treat_missing_data = "notBreaching"
  alarm_actions      = local.alarm_actions
  ok_actions         = local.alarm_actions
}
