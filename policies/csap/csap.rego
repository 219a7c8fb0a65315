# CSAP (Cloud Security Assurance Program, KISA/MSIT) grade requirements. A model of the rules, not legal advice.
package sovereign.csap

import rego.v1

import data.sovereign.evidence
import data.sovereign.facts

grade_rank := {"none": 0, "low": 1, "medium": 2, "high": 3}

required_grade := grade if {
	grade := facts.job.csap_grade
	grade_rank[grade]
} else := "none"

job_needs_csap if required_grade != "none"

lower_grade(a, b) := a if {
	grade_rank[a] <= grade_rank[b]
} else := b

# CSAP-04: a SaaS or PaaS takes at most the grade of the IaaS it runs on. A malformed certificate is
# denied by the completeness check; here it counts for nothing.
effective_grade(site) := site.csap.grade if {
	site.csap.service_model == "IaaS"
	grade_rank[site.csap.grade]
} else := lower_grade(site.csap.grade, site.csap.iaas_grade) if {
	grade_rank[site.csap.grade]
	grade_rank[site.csap.iaas_grade]
} else := "none"

# When the certificate ends: 24:00 KST on its expiry date.
expiry_ns(site) := evidence.date_end_ns(site.csap, "expires")

# The grade a site holds from now through the job's deadline; an expired certificate holds none.
unexpired_grade(site) := effective_grade(site) if {
	expiry_ns(site) >= facts.in_force_until_ns
} else := "none"

# Every CSAP grade needs the site, its data and backups, and its operations staff in Korea.
korean_premises := {"country": "the site", "ops_staff_country": "its operations staff"}

thirty_days_ns := ((30 * 24) * 3600) * 1000000000

# CSAP-01: the site's (effective) grade is at least the grade the job's system requires ...
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

# ... on premises in Korea.
violations contains finding if {
	job_needs_csap
	some site_id, site in input.sites
	some attribute, what in korean_premises
	country := evidence.country(site, attribute)
	country != "KR"
	finding := {
		"rule": "CSAP-01",
		"site": site_id,
		"message": sprintf("%s: %s is in %s; every CSAP grade needs it in Korea", [site_id, what, country]),
	}
}

# CSAP-02: medium- and high-grade jobs need physical separation from other customers.
violations contains finding if {
	required_grade in {"medium", "high"}
	some site_id, site in input.sites
	site.separation == "logical"
	finding := {
		"rule": "CSAP-02",
		"site": site_id,
		"message": sprintf("%s separates customers logically; a %s-grade job needs physical separation", [site_id, required_grade]),
	}
}

# CSAP-03: high-grade jobs need external networks blocked and one integrated security audit log (2024).
violations contains finding if {
	required_grade == "high"
	some site_id, site in input.sites
	missing := [name |
		some name in ["external_network_blocked", "integrated_audit_log"]
		site[name] == false
	]
	count(missing) > 0
	finding := {
		"rule": "CSAP-03",
		"site": site_id,
		"message": sprintf("%s lacks %s, required for a high-grade job", [site_id, concat(" and ", missing)]),
	}
}

# CSAP-05: the certificate must be valid until the job's deadline, and now ...
violations contains finding if {
	job_needs_csap
	some site_id, site in input.sites
	expiry_ns(site) < facts.in_force_until_ns
	finding := {"rule": "CSAP-05", "site": site_id, "message": lapse(site_id, site)}
}

lapse(site_id, site) := sprintf("%s's CSAP certificate expired on %s (24:00 KST)", [site_id, site.csap.expires]) if {
	expiry_ns(site) <= facts.now_ns
} else := sprintf(
	"%s's CSAP certificate expires on %s (24:00 KST), before the job's deadline %s",
	[site_id, site.csap.expires, facts.job.deadline],
)

# ... and a certificate within 30 days of expiry is an early warning even when it outlives the deadline: a
# part of the rule with its own mode (data.rules["CSAP-05"].part_modes.early_warning, warn in the catalogue).
violations contains finding if {
	job_needs_csap
	some site_id, site in input.sites
	expiry_ns(site) >= facts.in_force_until_ns
	expiry_ns(site) - facts.now_ns < thirty_days_ns
	finding := {
		"rule": "CSAP-05",
		"site": site_id,
		"part": "early_warning",
		"message": sprintf("%s's CSAP certificate expires on %s, within 30 days", [site_id, site.csap.expires]),
	}
}
