# Health-data rules (Medical Service Act; 2024 health-data guideline). A model of the rules, not legal advice.
package sovereign.health

import rego.v1

import data.sovereign.evidence
import data.sovereign.facts

# HLT-01: electronic medical records stay in Korea.
violations contains finding if {
	"emr" in facts.categories
	some site_id, site in input.sites
	country := facts.country(site)
	country != "KR"
	finding := {
		"rule": "HLT-01",
		"site": site_id,
		"message": sprintf("%s is in %s; electronic medical records stay in Korea", [site_id, country]),
	}
}

# HLT-02: genomic data needs a closed, access-controlled site ...
violations contains finding if {
	"genomic" in facts.categories
	some site_id, site in input.sites
	site.closed_environment == false
	finding := {
		"rule": "HLT-02",
		"site": site_id,
		"message": sprintf("%s is not a closed, access-controlled environment, required for genomic data", [site_id]),
	}
}

# ... and a data review board's approval id on file.
violations contains finding if {
	"genomic" in facts.categories
	not evidence.text(facts.tenant, "review_board_approval")
	some site_id, _ in input.sites
	finding := {
		"rule": "HLT-02",
		"site": site_id,
		"message": sprintf("%s has no data review board approval on file for genomic data", [facts.tenant_name]),
	}
}
