# Export-control rules on accelerators. A model of the guidance, not legal advice.
package sovereign.export

import rego.v1

# EXP-01: no site whose accelerators are Chinese-designed advanced-computing chips
# (modelled on US BIS May 2025 guidance, General Prohibition 10).
violations contains finding if {
	some site_id, site in input.sites
	some pool in site.pools
	pool.accelerator_origin == "CN"
	finding := {
		"rule": "EXP-01",
		"site": site_id,
		"message": sprintf("%s offers %s, an advanced-computing chip of Chinese design", [site_id, pool.accelerator_model]),
	}
}
