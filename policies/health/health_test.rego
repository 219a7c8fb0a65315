package sovereign.health_test

import rego.v1

import data.sovereign.health
import data.sovereign.test_fixtures as fx

job(category) := fx.with_datasets([fx.dataset({"categories": [category], "personal_info": true})])

approved := object.union(fx.tenant("health"), {"review_board_approval": "IRB-2026-0412"})

rules(job_doc, tenant_doc, site) := found if {
	findings := health.violations with input as fx.request(job_doc, tenant_doc, {"s": site})
	found := fx.rules_at(findings, "s")
}
test_hlt01_medical_records_abroad_denied if "HLT-01" in rules(job("emr"), approved, fx.foreign_site)

test_hlt01_medical_records_in_korea_allowed if not "HLT-01" in rules(job("emr"), approved, fx.korean_site)

test_hlt02_genomic_data_at_open_site_denied if {
	open_site := object.union(fx.korean_site, {"closed_environment": false})
	"HLT-02" in rules(job("genomic"), approved, open_site)
}

test_hlt02_genomic_data_without_approval_denied if "HLT-02" in rules(job("genomic"), fx.tenant("health"), fx.korean_site)

test_hlt02_genomic_data_closed_site_with_approval_allowed if not "HLT-02" in rules(job("genomic"), approved, fx.korean_site)

test_hlt02_blank_review_board_approval_denied if {
	tenant := object.union(fx.tenant("health"), {"review_board_approval": ""})
	job := fx.with_datasets([fx.dataset({"categories": ["genomic"]})])
	some f in health.violations with input as fx.request(job, tenant, {"s": fx.korean_site})
	f.rule == "HLT-02"
}

test_hlt01_category_in_odd_case_denied if {
	job := fx.with_datasets([fx.dataset({"categories": ["EMR"]})])
	some f in health.violations with input as fx.request(job, fx.tenant("health"), {"s": fx.foreign_site})
	f.rule == "HLT-01"
}
