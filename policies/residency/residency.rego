# Data residency for public-sector tenants. A model of the rules, not legal advice.
package sovereign.residency

import rego.v1

import data.sovereign.facts

public_sectors := {"government", "public"}

# RES-01: public-sector jobs run only at sites in Korea (CSAP requires a Korean location).
violations contains finding if {
	facts.sector in public_sectors
	some site_id, site in input.sites
	country := facts.country(site)
	country != "KR"
	finding := {
		"rule": "RES-01",
		"site": site_id,
		"message": sprintf(
			"%s is in %s; %s is a %s-sector tenant and its jobs must run in Korea",
			[site_id, country, facts.tenant_name, facts.sector],
		),
	}
}
