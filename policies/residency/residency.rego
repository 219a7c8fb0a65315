# Data residency for public-sector tenants.
package sovereign.residency

import rego.v1

public_sectors := {"government", "public"}

tenant_is_public_sector if input.tenant.sector in public_sectors

# RES-01: public-sector jobs run only at sites in Korea (CSAP requires Korean location).
violations contains finding if {
	tenant_is_public_sector
	some site_id, site in input.sites
	site.country != "KR"
	finding := {
		"rule": "RES-01",
		"site": site_id,
		"message": sprintf(
			"%s is in %s; %s is a %s-sector tenant and its jobs must run in Korea",
			[site_id, site.country, input.tenant.tenant_id, input.tenant.sector],
		),
	}
}
