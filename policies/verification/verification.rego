# Verified site attributes: a tenant may require that a listed auditor vouched for what a site claims.
package sovereign.verification

import rego.v1

import data.sovereign.facts

# VER-01: a tenant that requires verified sites runs only where an auditor's signature covers the attributes.
violations contains finding if {
	facts.tenant.requires_verified_sites == true
	some site_id, site in input.sites
	site.verified == false
	finding := {
		"rule": "VER-01",
		"site": site_id,
		"message": sprintf("%s's attributes are not signed by a listed auditor; %s requires verified sites", [site_id, facts.tenant_name]),
	}
}
