# Sovereign-tenant levels, modelled on Gaia-X labels and CSAP staffing. A model, not legal advice.
package sovereign.sovereignty

import rego.v1

import data.sovereign.evidence
import data.sovereign.facts

# What each level needs of a site, on top of the levels below it.
requirements := {
	"L1": {},
	"L2": {"country": "located"},
	"L3": {"country": "located", "operator_country": "operated", "ops_staff_country": "staffed", "management_country": "managed"},
}

# SOV-01: L2 = Korean location; L3 = also a Korean operator, Korean operations staff and no foreign access.
violations contains finding if {
	level := facts.tenant.sovereignty_level
	some site_id, site in input.sites
	some attribute, verb in requirements[level]
	country := evidence.country(site, attribute)
	country != "KR"
	finding := {
		"rule": "SOV-01",
		"site": site_id,
		"message": sprintf("%s is %s from %s; %s requires sovereignty %s (all in Korea)", [site_id, verb, country, facts.tenant_name, level]),
	}
}
