# Map data (Spatial Data Act) and national core technology (Industrial Technology Protection Act).
# A model of the rules, not legal advice.
package sovereign.locality

import rego.v1

import data.sovereign.evidence
import data.sovereign.facts

restricted := {"map", "core_technology"} & facts.categories

unlicensed := restricted - evidence.lowered(object.get(facts.tenant, "export_licences", []))

# LOC-01: map data or national core technology stays in Korea unless a licence or approval is on file.
violations contains finding if {
	count(unlicensed) > 0
	some site_id, site in input.sites
	country := facts.country(site)
	country != "KR"
	finding := {
		"rule": "LOC-01",
		"site": site_id,
		"message": sprintf("%s is in %s; %s data may not leave Korea without a licence on file", [site_id, country, concat(" and ", sort(unlicensed))]),
	}
}
