package sovereign.sovereignty_test

import rego.v1

import data.sovereign.sovereignty
import data.sovereign.test_fixtures as fx

tenant(level) := object.union(fx.tenant("government"), {"sovereignty_level": level})

foreign_operator := object.union(fx.korean_site, {"operator_country": "US", "management_country": "US"})

rules(level, site) := found if {
	findings := sovereignty.violations with input as fx.request(fx.job, tenant(level), {"s": site})
	found := fx.rules_at(findings, "s")
}
test_sov01_l2_abroad_denied if "SOV-01" in rules("L2", fx.foreign_site)

test_sov01_l2_foreign_operator_in_korea_allowed if not "SOV-01" in rules("L2", foreign_operator)

test_sov01_l3_foreign_operator_denied if "SOV-01" in rules("L3", foreign_operator)

test_sov01_l3_fully_korean_site_allowed if not "SOV-01" in rules("L3", fx.korean_site)

test_sov01_l1_anywhere_allowed if not "SOV-01" in rules("L1", fx.foreign_site)
