output "zone_id" {
  description = "Hosted zone id."
  value       = local.zone_id
}

output "zone_name" {
  description = "Zone name with the trailing dot (the runbook's dns.zone)."
  value       = local.zone_name
}

output "record_name" {
  description = "Record name with the trailing dot (the runbook's dns.records[].name)."
  value       = local.fqdn
}

output "record_type" {
  description = "Record type."
  value       = var.record_type
}

output "ttl" {
  description = "Record TTL in seconds."
  value       = var.ttl
}

output "set_identifiers" {
  description = "Per drorch region name, its record's set identifier."
  value       = { for k, r in aws_route53_record.region : k => r.set_identifier }
}

output "health_check_ids" {
  description = "Per drorch region name, its health check id."
  value       = { for k, h in aws_route53_health_check.region : k => h.id }
}
