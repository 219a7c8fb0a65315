# N2SF (National Network Security Framework, NIS guideline 1.0, September 2025) data grades C / S / O.
# A model of the framework, not legal advice; where S-grade data may go is unsettled in public sources.
package sovereign.n2sf

import rego.v1

import data.sovereign.csap
import data.sovereign.evidence
import data.sovereign.facts

grade_rank := {"O": 0, "S": 1, "C": 2}

# N2SF-01: a job (a system holding several grades) takes the highest grade among its datasets.
job_grade := grade if {
	ranks := [grade_rank[dataset.n2sf_grade] | some dataset in facts.datasets]
	count(ranks) > 0
	some grade, rank in grade_rank
	rank == max(ranks)
} else := "O"

# Korean government or Korean public bodies.
public_operators := {"government", "public"}

# N2SF-02: C-grade jobs stay in Korean government or public data centres that are not internet-facing.
violations contains finding if {
	job_grade == "C"
	some site_id, site in input.sites
	site.operator_type == "private"
	finding := {
		"rule": "N2SF-02",
		"site": site_id,
		"message": sprintf("%s is run by a private operator; C-grade data stays with government or public operators", [site_id]),
	}
}

violations contains finding if {
	job_grade == "C"
	some site_id, site in input.sites
	some attribute in ["operator_country", "country"]
	country := evidence.country(site, attribute)
	country != "KR"
	finding := {
		"rule": "N2SF-02",
		"site": site_id,
		"message": sprintf("%s has %s %s; C-grade data stays with Korean government or public bodies in Korea", [site_id, attribute, country]),
	}
}

violations contains finding if {
	job_grade == "C"
	some site_id, site in input.sites
	site.internet_facing == true
	finding := {
		"rule": "N2SF-02",
		"site": site_id,
		"message": sprintf("%s is internet-facing; C-grade data needs a closed site", [site_id]),
	}
}

# C-grade data is more sensitive than S: it needs what S does, and more (N2SF-02).
s_or_higher := {"S", "C"}

# N2SF-03: S-grade jobs need a Korean cloud holding an unexpired CSAP grade of medium or higher (which
# itself needs the site and its staff in Korea), and no internet egress, external AI APIs included.
# Treated as denied unless a tenant exemption says otherwise (public sources do not settle it).
violations contains finding if {
	job_grade in s_or_higher
	some site_id, site in input.sites
	country := facts.country(site)
	country != "KR"
	finding := {
		"rule": "N2SF-03",
		"site": site_id,
		"message": sprintf("%s is in %s; %s-grade data stays in Korea", [site_id, country, job_grade]),
	}
}

violations contains finding if {
	job_grade in s_or_higher
	some site_id, site in input.sites
	held := s_grade_holding(site)
	# A membership test, not a comparison of ranks: regorus's interpreter enumerates an index bound from a
	# function's value (the parity test caught it).
	held in {"none", "low"}
	finding := {
		"rule": "N2SF-03",
		"site": site_id,
		"message": sprintf("%s holds CSAP grade %s through the job's deadline; %s-grade data needs medium or higher", [site_id, held, job_grade]),
	}
}

# The CSAP grade that counts for S-grade data: unexpired, on premises and staff in Korea.
s_grade_holding(site) := csap.unexpired_grade(site) if {
	facts.in_korea(site)
	evidence.country(site, "ops_staff_country") == "KR"
} else := "none"

violations contains finding if {
	job_grade in s_or_higher
	facts.egress
	some site_id, _ in input.sites
	finding := {
		"rule": "N2SF-03",
		"site": site_id,
		"message": sprintf("the job has internet egress (or calls external AI APIs), which %s-grade data may not reach", [job_grade]),
	}
}
