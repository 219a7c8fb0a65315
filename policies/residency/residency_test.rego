package sovereign.residency_test

import rego.v1

import data.sovereign.residency
import data.sovereign.test_fixtures as fx

findings(sector) := found if {
	found := residency.violations with input as fx.request(fx.job, fx.tenant(sector), fx.sites)
}

test_res01_public_sector_abroad_denied if "RES-01" in fx.rules_at(findings("government"), "tokyo")

test_res01_public_sector_in_korea_allowed if not "RES-01" in fx.rules_at(findings("public"), "seoul")

test_res01_private_tenant_abroad_allowed if count(findings("startup")) == 0

test_res01_lower_case_korean_site_allowed if {
	findings := residency.violations with input as fx.request(fx.job, fx.tenant("government"), {"s": object.union(fx.korean_site, {"country": "kr"})})
	count(findings) == 0
}

test_res01_lower_case_foreign_site_denied if {
	findings := residency.violations with input as fx.request(fx.job, fx.tenant("government"), {"s": object.union(fx.korean_site, {"country": "jp"})})
	"RES-01" in fx.rules_at(findings, "s")
}
