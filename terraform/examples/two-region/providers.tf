# One provider per region, aliased; every module gets its providers explicitly.
provider "aws" {
  alias  = "primary"
  region = var.primary_region

  default_tags {
    tags = var.tags
  }
}

provider "aws" {
  alias  = "secondary"
  region = var.secondary_region

  default_tags {
    tags = var.tags
  }
}

# Route 53 health check metrics exist only in us-east-1, so the alarms live there
# (https://docs.aws.amazon.com/Route53/latest/DeveloperGuide/monitoring-health-checks.html).
provider "aws" {
  alias  = "us_east_1"
  region = "us-east-1"

  default_tags {
    tags = var.tags
  }
}
