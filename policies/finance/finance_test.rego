package sovereign.finance_test

import rego.v1

import data.sovereign.finance
import data.sovereign.test_fixtures as fx

credit_job := fx.with_datasets([fx.dataset({"categories": ["credit"], "personal_info": true})])

rules(job_doc, tenant_doc, site) := found if {
	findings := finance.violations with input as fx.request(job_doc, tenant_doc, {"s": site})
	found := fx.rules_at(findings, "s")
}
test_fin01_credit_data_abroad_denied if "FIN-01" in rules(credit_job, fx.tenant("finance"), fx.foreign_site)

test_fin01_foreign_management_plane_denied if {
	managed_abroad := object.union(fx.korean_site, {"management_country": "US"})
	"FIN-01" in rules(credit_job, fx.tenant("finance"), managed_abroad)
}

test_fin01_credit_data_in_korea_allowed if not "FIN-01" in rules(credit_job, fx.tenant("finance"), fx.korean_site)

test_fin01_non_financial_tenant_allowed if not "FIN-01" in rules(credit_job, fx.tenant("startup"), fx.foreign_site)

genai := object.union(fx.job, {"generative_ai": true, "internet_egress": true})

test_fin02_generative_ai_with_egress_without_sandbox_denied if "FIN-02" in rules(genai, fx.tenant("finance"), fx.korean_site)

test_fin02_with_sandbox_approval_allowed if {
	tenant := object.union(fx.tenant("finance"), {"sandbox_approval": "FSC-SANDBOX-2025-017"})
	not "FIN-02" in rules(genai, tenant, fx.korean_site)
}

test_fin03_important_workload_warns if {
	important := object.union(fx.job, {"importance": "important"})
	some f in finance.violations with input as fx.request(important, fx.tenant("finance"), {"s": fx.korean_site})
	f.rule == "FIN-03"
}

test_fin03_normal_workload_allowed if not "FIN-03" in rules(fx.job, fx.tenant("finance"), fx.korean_site)

# Unique identification data includes resident registration numbers.
test_fin01_bank_rrn_data_abroad_denied if {
	rrn := fx.with_datasets([fx.dataset({"contains_rrn": true, "personal_info": true})])
	"FIN-01" in fin_rules(rrn, fx.tenant("finance"), fx.foreign_site)
}

test_fin01_bank_rrn_data_managed_abroad_denied if {
	rrn := fx.with_datasets([fx.dataset({"contains_rrn": true})])
	"FIN-01" in fin_rules(rrn, fx.tenant("finance"), object.union(fx.korean_site, {"management_country": "US"}))
}

test_fin02_blank_sandbox_approval_denied if {
	tenant := object.union(fx.tenant("finance"), {"sandbox_approval": "  "})
	"FIN-02" in fin_rules(genai_with({"internet_egress": true}), tenant, fx.korean_site)
}

# Egress is any internet egress, external AI APIs included.
test_fin02_external_ai_apis_count_as_egress_denied if {
	"FIN-02" in fin_rules(genai_with({"external_ai_apis": true}), fx.tenant("finance"), fx.korean_site)
}

test_fin02_approval_on_file_allowed if {
	tenant := object.union(fx.tenant("finance"), {"sandbox_approval": "FSC-2026-001"})
	not "FIN-02" in fin_rules(genai_with({"external_ai_apis": true}), tenant, fx.korean_site)
}

genai_with(fields) := object.union(object.union(fx.job, {"generative_ai": true}), fields)

fin_rules(job_doc, tenant_doc, site) := found if {
	findings := finance.violations with input as fx.request(job_doc, tenant_doc, {"s": site})
	found := fx.rules_at(findings, "s")
}
