package sovereign.verification_test

import rego.v1

import data.sovereign.test_fixtures as fx
import data.sovereign.verification

strict := object.union(fx.tenant("government"), {"requires_verified_sites": true})

rules(tenant_doc, verified) := found if {
	site := object.union(fx.korean_site, {"verified": verified})
	findings := verification.violations with input as fx.request(fx.job, tenant_doc, {"s": site})
	found := fx.rules_at(findings, "s")
}

test_ver01_unverified_site_for_strict_tenant_denied if "VER-01" in rules(strict, false)

test_ver01_verified_site_for_strict_tenant_allowed if not "VER-01" in rules(strict, true)

test_ver01_unverified_site_for_other_tenants_allowed if not "VER-01" in rules(fx.tenant("government"), false)
