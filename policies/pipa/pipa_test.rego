package sovereign.pipa_test

import rego.v1

import data.sovereign.pipa
import data.sovereign.test_fixtures as fx

personal := fx.with_datasets([fx.dataset({"personal_info": true})])

rules(job_doc, tenant_doc, site) := found if {
	findings := pipa.violations with input as fx.request(job_doc, tenant_doc, {"s": site})
	found := fx.rules_at(findings, "s")
}
test_pipa01_personal_info_abroad_without_ground_denied if "PIPA-01" in rules(personal, fx.tenant("enterprise"), fx.foreign_site)

test_pipa01_personal_info_abroad_with_consent_allowed if {
	tenant := object.union(fx.tenant("enterprise"), {"transfer_basis": ["consent"]})
	not "PIPA-01" in rules(personal, tenant, fx.foreign_site)
}

test_pipa01_personal_info_in_korea_allowed if not "PIPA-01" in rules(personal, fx.tenant("enterprise"), fx.korean_site)

test_pipa02_suspended_country_denied if {
	found := rules(personal, fx.tenant("enterprise"), fx.foreign_site) with data.country_lists.pipa_suspended as ["JP"]
	"PIPA-02" in found
}

test_pipa02_country_not_suspended_allowed if {
	found := rules(personal, fx.tenant("enterprise"), fx.foreign_site) with data.country_lists.pipa_suspended as ["XX"]
	not "PIPA-02" in found
}

pseudonymised(purpose) := object.union(fx.with_datasets([fx.dataset({"personal_info": true, "pseudonymised": true})]), {"purpose": purpose})

test_pipa03_commercial_use_without_consent_denied if "PIPA-03" in rules(pseudonymised("commercial"), fx.tenant("startup"), fx.korean_site)

test_pipa03_research_use_allowed if not "PIPA-03" in rules(pseudonymised("research"), fx.tenant("startup"), fx.korean_site)

test_pipa03_site_holding_reid_key_denied if {
	keyholder := object.union(fx.korean_site, {"holds_reid_key": true})
	"PIPA-03" in rules(pseudonymised("research"), fx.tenant("startup"), keyholder)
}

test_pipa03_consent_obtained_allowed if {
	consented := object.union(pseudonymised("commercial"), {"consent_obtained": true})
	not "PIPA-03" in rules(consented, fx.tenant("startup"), fx.korean_site)
}

rrn_job := fx.with_datasets([fx.dataset({"personal_info": true, "contains_rrn": true})])

test_pipa04_rrn_without_legal_basis_denied if "PIPA-04" in rules(rrn_job, fx.tenant("finance"), fx.korean_site)

test_pipa04_rrn_unencrypted_site_denied if {
	tenant := object.union(fx.tenant("finance"), {"rrn_legal_basis": true})
	"PIPA-04" in rules(rrn_job, tenant, object.union(fx.korean_site, {"encryption_at_rest": false}))
}

test_pipa04_rrn_with_basis_and_encryption_allowed if {
	tenant := object.union(fx.tenant("finance"), {"rrn_legal_basis": true})
	not "PIPA-04" in rules(rrn_job, tenant, fx.korean_site)
}

# Personal information includes resident registration numbers and pseudonymised personal data.
test_pipa01_rrn_data_not_marked_personal_abroad_denied if {
	found := pipa_rules(fx.with_datasets([fx.dataset({"contains_rrn": true})]), fx.tenant("enterprise"), fx.foreign_site)
	"PIPA-01" in found
}

test_pipa01_pseudonymised_data_not_marked_personal_abroad_denied if {
	found := pipa_rules(fx.with_datasets([fx.dataset({"pseudonymised": true})]), fx.tenant("enterprise"), fx.foreign_site)
	"PIPA-01" in found
}

test_pipa01_lawful_ground_in_odd_case_allowed if {
	grounded := object.union(fx.tenant("enterprise"), {"transfer_basis": ["Consent"]})
	not "PIPA-01" in pipa_rules(fx.with_datasets([fx.dataset({"personal_info": true})]), grounded, fx.foreign_site)
}

test_pipa02_pseudonymised_data_to_suspended_country_denied if {
	found := pipa_rules(fx.with_datasets([fx.dataset({"pseudonymised": true})]), fx.tenant("enterprise"), fx.foreign_site) with data.country_lists.pipa_suspended as ["JP"]
	"PIPA-02" in found
}

pipa_rules(job_doc, tenant_doc, site) := found if {
	findings := pipa.violations with input as fx.request(job_doc, tenant_doc, {"s": site})
	found := fx.rules_at(findings, "s")
}
