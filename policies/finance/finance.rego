# Financial-sector rules (Electronic Financial Supervisory Regulation, FSC/FSS guidance). A model, not legal advice.
package sovereign.finance

import rego.v1

import data.sovereign.evidence
import data.sovereign.facts

financial_tenant if facts.sector == "finance"

# Unique identification data includes resident registration numbers (facts.categories adds them).
credit_or_identity := {"credit", "unique_id"} & facts.categories

# FIN-01: personal credit or unique-identification data: compute and its management plane in Korea (Art. 14-2).
violations contains finding if {
	financial_tenant
	count(credit_or_identity) > 0
	some site_id, site in input.sites
	some place, attribute in {"computing": "country", "management plane": "management_country"}
	country := evidence.country(site, attribute)
	country != "KR"
	finding := {
		"rule": "FIN-01",
		"site": site_id,
		"message": sprintf("%s has its %s in %s; %s data stays in Korea", [site_id, place, country, concat(" and ", sort(credit_or_identity))]),
	}
}

# FIN-02: a financial tenant's generative-AI job with internet egress (external AI APIs included) needs a
# regulatory-sandbox approval id on file.
violations contains finding if {
	financial_tenant
	facts.job.generative_ai == true
	facts.egress
	not evidence.text(facts.tenant, "sandbox_approval")
	some site_id, _ in input.sites
	finding := {
		"rule": "FIN-02",
		"site": site_id,
		"message": sprintf("%s has no FSC regulatory-sandbox approval on file for generative AI with internet access", [facts.tenant_name]),
	}
}

# FIN-03: important financial workloads are reported to the FSS within three months of use (2023 rule).
violations contains finding if {
	financial_tenant
	facts.job.importance == "important"
	some site_id, _ in input.sites
	finding := {
		"rule": "FIN-03",
		"site": site_id,
		"message": sprintf("report this important workload at %s to the FSS within 3 months", [site_id]),
	}
}
