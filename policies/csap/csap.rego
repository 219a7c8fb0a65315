# CSAP (Cloud Security Assurance Program, KISA/MSIT) grade requirements. A model of the rules, not legal advice.
package sovereign.csap

import rego.v1

import data.sovereign.facts

grade_rank := {"none": 0, "low": 1, "medium": 2, "high": 3}

required_grade := object.get(input.job, "csap_grade", "none")

job_needs_csap if required_grade != "none"

lower_grade(a, b) := a if {
	grade_rank[a] <= grade_rank[b]
} else := b

# CSAP-04: a SaaS or PaaS takes at most the grade of the IaaS it runs on.
effective_grade(site) := "none" if {
	not site.csap
} else := site.csap.grade if {
	site.csap.service_model == "IaaS"
} else := lower_grade(site.csap.grade, object.get(site.csap, "iaas_grade", "none"))

thirty_days_ns := ((30 * 24) * 3600) * 1000000000

deadline_ns := time.parse_rfc3339_ns(input.job.deadline)

now_ns := time.parse_rfc3339_ns(input.now)

# Each certified site's expiry, parsed once per decision rather than once per rule.
expiry_ns[site_id] := facts.end_of_day_ns(site.csap.expires) if {
	job_needs_csap
	some site_id, site in input.sites
	site.csap
}

# CSAP-01: the site's (effective) grade is at least the grade the job's system requires.
violations contains finding if {
	job_needs_csap
	some site_id, site in input.sites
	grade := effective_grade(site)
	grade_rank[grade] < grade_rank[required_grade]
	finding := {
		"rule": "CSAP-01",
		"site": site_id,
		"message": sprintf("%s has effective CSAP grade %s; the job requires %s", [site_id, grade, required_grade]),
	}
}

# CSAP-02: medium- and high-grade jobs need physical separation from other customers.
violations contains finding if {
	required_grade in {"medium", "high"}
	some site_id, site in input.sites
	site.separation != "physical"
	finding := {
		"rule": "CSAP-02",
		"site": site_id,
		"message": sprintf(
			"%s separates customers %sly; a %s-grade job needs physical separation",
			[site_id, site.separation, required_grade],
		),
	}
}

# CSAP-03: high-grade jobs need external networks blocked and one integrated security audit log (2024).
violations contains finding if {
	required_grade == "high"
	some site_id, site in input.sites
	missing := [name |
		some name in ["external_network_blocked", "integrated_audit_log"]
		not site[name]
	]
	count(missing) > 0
	finding := {
		"rule": "CSAP-03",
		"site": site_id,
		"message": sprintf("%s lacks %s, required for a high-grade job", [site_id, concat(" and ", missing)]),
	}
}

# CSAP-05: the certificate must be valid until the job's deadline ...
violations contains finding if {
	job_needs_csap
	some site_id, site in input.sites
	expiry_ns[site_id] < deadline_ns
	finding := {
		"rule": "CSAP-05",
		"site": site_id,
		"message": sprintf(
			"%s's CSAP certificate expires on %s, before the job's deadline %s",
			[site_id, site.csap.expires, input.job.deadline],
		),
	}
}

# ... and a certificate within 30 days of expiry is a warning even when it outlives the deadline.
violations contains finding if {
	job_needs_csap
	some site_id, site in input.sites
	expiry_ns[site_id] >= deadline_ns
	expiry_ns[site_id] - now_ns < thirty_days_ns
	finding := {
		"rule": "CSAP-05",
		"site": site_id,
		"warn_only": true,
		"message": sprintf("%s's CSAP certificate expires on %s, within 30 days", [site_id, site.csap.expires]),
	}
}
