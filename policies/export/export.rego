# Export-control rules on accelerators and training. A model of US BIS guidance, not legal advice.
package sovereign.export

import rego.v1

import data.sovereign.evidence
import data.sovereign.facts

d5_countries := {upper(country) | some country in data.country_lists.d5}

# Chinese design: the People's Republic, Hong Kong and Macau included (the EAR treats Hong Kong as China).
chinese_design := {upper(country) | some country in data.country_lists.chinese_design}

training_kinds := {"training", "fine_tuning"}

ten_to_the_26 := 100000000000000000000000000

# EXP-01: no site whose accelerators are Chinese-designed advanced-computing chips
# (US BIS May 2025 guidance, General Prohibition 10).
violations contains finding if {
	some site_id, site in input.sites
	is_array(site.pools)
	some pool in site.pools
	origin := evidence.country(pool, "accelerator_origin")
	origin in chinese_design
	finding := {
		"rule": "EXP-01",
		"site": site_id,
		"message": sprintf("%s offers %s, an advanced-computing chip designed in %s", [site_id, evidence.label(pool, "accelerator_model", "an accelerator"), origin]),
	}
}

# EXP-02: training for a tenant headquartered (or whose parent is) in a Country Group D:5 country goes to
# manual review (BIS red-flag guidance).
tenant_d5_links contains country if {
	some field in ["hq_country", "parent_hq_country"]
	country := evidence.country(facts.tenant, field)
	country in d5_countries
}

violations contains finding if {
	facts.job.kind in training_kinds
	count(tenant_d5_links) > 0
	some site_id, _ in input.sites
	finding := {
		"rule": "EXP-02",
		"site": site_id,
		"message": sprintf("%s is linked to %s (Country Group D:5): training goes to manual export review", [facts.tenant_name, concat(", ", sort(tenant_d5_links))]),
	}
}

# EXP-03: closed model weights trained above 10^26 operations, leaving Korea, raise a warning
# (modelled on the former ECCN 4E091, a rescinded rule: status uncertain).
violations contains finding if {
	evidence.number(facts.job, "training_ops") > ten_to_the_26
	facts.job.open_weights == false
	some site_id, site in input.sites
	country := facts.country(site)
	country != "KR"
	finding := {
		"rule": "EXP-03",
		"site": site_id,
		"message": sprintf("%s is in %s: closed weights trained above 1e26 operations would leave Korea", [site_id, country]),
	}
}
