# Shared inputs for the policy tests (a _test file, so it never ships in the decision bundle).
package sovereign.test_fixtures

import rego.v1

now := "2026-11-22T00:00:00Z"

korean_site := {
	"country": "KR", "region": "seoul", "operator_type": "private", "operator_country": "KR",
	"ops_staff_country": "KR", "management_country": "KR", "internet_facing": false, "separation": "physical",
	"integrated_audit_log": true, "external_network_blocked": true, "encryption_at_rest": true,
	"holds_reid_key": false, "closed_environment": true, "verified": true,
	"csap": {"grade": "high", "service_model": "IaaS", "expires": "2029-01-01"},
	"pools": [{"accelerator_model": "B200", "accelerator_origin": "US"}],
}

foreign_site := object.union(object.remove(korean_site, ["csap"]), {
	"country": "JP", "operator_country": "US", "ops_staff_country": "JP", "management_country": "US",
	"internet_facing": true, "separation": "logical", "closed_environment": false,
})

sites := {"seoul": korean_site, "tokyo": foreign_site}

tenant(sector) := {
	"tenant_id": "t1", "sector": sector, "hq_country": "KR", "sovereignty_level": "L1", "transfer_basis": [],
	"rrn_legal_basis": false, "export_licences": [], "requires_verified_sites": false,
}

job := {
	"kind": "training", "csap_grade": "none", "deadline": "2027-06-01T00:00:00Z", "datasets": [],
	"purpose": "service", "consent_obtained": false, "generative_ai": false, "internet_egress": false,
	"external_ai_apis": false, "importance": "normal", "open_weights": false,
}

dataset(fields) := object.union({"name": "d", "n2sf_grade": "O", "categories": [], "personal_info": false,
	"pseudonymised": false, "contains_rrn": false}, fields)

with_datasets(list) := object.union(job, {"datasets": list})

request(job_doc, tenant_doc, site_map) := {"job": job_doc, "tenant": tenant_doc, "sites": site_map, "now": now}

# The rule ids a finding set holds for one site.
rules_at(findings, site_id) := {f.rule | some f in findings; f.site == site_id}

# Every attribute any rule reads, the optional ones included: the request the absence checks of
# `sovereign policy test` remove one attribute from at a time.
complete_request := request(
	object.union(with_datasets([dataset({"categories": ["general"]})]), {"training_ops": 1e20}),
	object.union(tenant("enterprise"), {
		"parent_hq_country": "KR", "sandbox_approval": "FSC-2026-001", "review_board_approval": "IRB-7",
	}),
	sites,
)
