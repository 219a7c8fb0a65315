package sovereign.residency_test

import rego.v1

import data.sovereign.residency

sites := {"seoul": {"country": "KR"}, "tokyo": {"country": "JP"}}

test_public_sector_job_denied_abroad if {
	some finding in residency.violations with input as {"tenant": {"tenant_id": "mois", "sector": "government"}, "sites": sites}
	finding.rule == "RES-01"
	finding.site == "tokyo"
}

test_public_sector_job_allowed_in_korea if {
	findings := residency.violations with input as {"tenant": {"tenant_id": "nia", "sector": "public"}, "sites": sites}
	every finding in findings {
		finding.site != "seoul"
	}
}

test_private_tenant_may_go_abroad if {
	count(residency.violations) == 0 with input as {"tenant": {"tenant_id": "hanbit-ai", "sector": "startup"}, "sites": sites}
}
