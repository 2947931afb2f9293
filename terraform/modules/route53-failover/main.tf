# Weighted records, one per region, each tied to a health check of its region's
# endpoint. drorch moves traffic by rewriting the weights (drorch/adapters/route53.py:
# one UPSERT batch, old region 0, new region active_weight), so Terraform sets the
# initial weights and then ignores them: an apply after a failover must not move
# traffic back. A record whose health check fails is left out of answers while another
# weighted record of the set is healthy
# (https://docs.aws.amazon.com/Route53/latest/DeveloperGuide/dns-failover-complex-configs.html).

data "aws_route53_zone" "this" {
  count = var.create_zone ? 0 : 1

  name         = var.zone_name
  private_zone = false
}

resource "aws_route53_zone" "this" {
  #checkov:skip=CKV2_AWS_38:DNSSEC signing needs a KMS key in us-east-1 and a DS record at the parent zone, outside this module
  #checkov:skip=CKV2_AWS_39:query logging needs a CloudWatch log group in us-east-1 with a resource policy for Route 53; the estate's logging owns it
  count = var.create_zone ? 1 : 0

  name          = var.zone_name
  comment       = "drorch: created by the route53-failover module"
  force_destroy = false
  tags          = var.tags
}

locals {
  zone_id   = var.create_zone ? aws_route53_zone.this[0].zone_id : data.aws_route53_zone.this[0].zone_id
  zone_name = "${trimsuffix(var.zone_name, ".")}."
  fqdn      = "${trimsuffix(var.record_name, ".")}."
}

resource "aws_route53_health_check" "region" {
  for_each = var.regions

  fqdn              = each.value.health_check_fqdn
  ip_address        = each.value.health_check_ip
  port              = each.value.health_check_port
  type              = each.value.health_check_type
  resource_path     = contains(["HTTP", "HTTPS", "HTTP_STR_MATCH", "HTTPS_STR_MATCH"], each.value.health_check_type) ? each.value.health_check_path : null
  failure_threshold = var.health_check_failure_threshold
  request_interval  = var.health_check_request_interval
  measure_latency   = false

  tags = merge(var.tags, { Name = "drorch-${each.key}" })
}

resource "aws_route53_record" "region" {
  #checkov:skip=CKV2_AWS_23:the records point at the regions' entry addresses given as inputs (load balancers or IPs managed elsewhere), not at resources of this configuration
  for_each = var.regions

  zone_id         = local.zone_id
  name            = local.fqdn
  type            = var.record_type
  ttl             = var.ttl
  records         = each.value.records
  set_identifier  = each.value.set_identifier
  health_check_id = aws_route53_health_check.region[each.key].id

  weighted_routing_policy {
    weight = each.value.weight
  }

  lifecycle {
    # drorch owns the weights once the records exist
    ignore_changes = [weighted_routing_policy]
  }
}
