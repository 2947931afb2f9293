variable "zone_name" {
  description = "Public hosted zone name, e.g. example.com (the trailing dot is optional)."
  type        = string
}

variable "create_zone" {
  description = "Create the hosted zone (true) or look up an existing public zone by name (false)."
  type        = bool
  default     = false
}

variable "record_name" {
  description = "Fully qualified record name, e.g. app.example.com."
  type        = string
}

variable "record_type" {
  description = "A, AAAA or CNAME (what drorch's runbook accepts)."
  type        = string
  default     = "A"

  validation {
    condition     = contains(["A", "AAAA", "CNAME"], var.record_type)
    error_message = "record_type must be A, AAAA or CNAME."
  }
}

variable "ttl" {
  description = "Record TTL in seconds: clients may keep the old region this long after a flip, so keep it well under the RTO target."
  type        = number
  default     = 60
}

variable "regions" {
  description = "Per drorch region name: the weighted record's set identifier, initial weight (primary 100, secondary 0), values, and what its health check probes."
  type = map(object({
    set_identifier    = string
    weight            = number
    records           = list(string)
    health_check_fqdn = optional(string)
    health_check_ip   = optional(string)
    health_check_port = optional(number, 443)
    health_check_type = optional(string, "HTTPS")
    health_check_path = optional(string, "/health")
  }))

  validation {
    condition     = length(var.regions) == 2
    error_message = "drorch runs two regions: give exactly two."
  }

  validation {
    condition     = length(distinct([for r in values(var.regions) : r.set_identifier])) == length(var.regions)
    error_message = "Each region needs its own set identifier."
  }
}

variable "health_check_failure_threshold" {
  description = "Consecutive failed checks before Route 53 calls the endpoint unhealthy."
  type        = number
  default     = 3
}

variable "health_check_request_interval" {
  description = "Seconds between checks: 30 (standard) or 10 (fast, costs more)."
  type        = number
  default     = 30

  validation {
    condition     = contains([10, 30], var.health_check_request_interval)
    error_message = "Route 53 accepts 10 or 30."
  }
}

variable "tags" {
  description = "Tags for the health checks (and the zone when created)."
  type        = map(string)
  default     = {}
}
