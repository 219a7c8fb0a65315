# N2SF (National Network Security Framework, NIS guideline 1.0, September 2025) data grades C / S / O.
# A model of the framework, not legal advice; where S-grade data may go is unsettled in public sources.
package sovereign.n2sf

import rego.v1

import data.sovereign.csap
import data.sovereign.facts

grade_rank := {"O": 0, "S": 1, "C": 2}

# N2SF-01: a job (a system holding several grades) takes the highest grade among its datasets.
job_grade := grade if {
	ranks := [grade_rank[object.get(dataset, "n2sf_grade", "O")] | some dataset in facts.datasets]
	count(ranks) > 0
	some grade, rank in grade_rank
	rank == max(ranks)
} else := "O"

public_operators := {"government", "public"}

# N2SF-02: C-grade jobs stay in government or public data centres that are not internet-facing.
violations contains finding if {
	job_grade == "C"
	some site_id, site in input.sites
	not site.operator_type in public_operators
	finding := {
		"rule": "N2SF-02",
		"site": site_id,
		"message": sprintf("%s is run by a %s operator; C-grade data stays with government or public operators", [site_id, site.operator_type]),
	}
}

violations contains finding if {
	job_grade == "C"
	some site_id, site in input.sites
	site.internet_facing
	finding := {
		"rule": "N2SF-02",
		"site": site_id,
		"message": sprintf("%s is internet-facing; C-grade data needs a closed site", [site_id]),
	}
}

# N2SF-03: S-grade jobs need a Korean cloud of CSAP medium or higher and no calls to external AI APIs.
# Treated as denied unless a tenant exemption says otherwise (public sources do not settle it).
violations contains finding if {
	job_grade == "S"
	some site_id, site in input.sites
	not facts.site_in_korea(site)
	finding := {
		"rule": "N2SF-03",
		"site": site_id,
		"message": sprintf("%s is in %s; S-grade data stays in Korea", [site_id, site.country]),
	}
}

violations contains finding if {
	job_grade == "S"
	some site_id, site in input.sites
	grade := csap.effective_grade(site)
	csap.grade_rank[grade] < csap.grade_rank.medium
	finding := {
		"rule": "N2SF-03",
		"site": site_id,
		"message": sprintf("%s has CSAP grade %s; S-grade data needs medium or higher", [site_id, grade]),
	}
}

violations contains finding if {
	job_grade == "S"
	object.get(input.job, "external_ai_apis", false)
	some site_id, _ in input.sites
	finding := {
		"rule": "N2SF-03",
		"site": site_id,
		"message": "the job calls external AI APIs, which S-grade data may not reach",
	}
}
