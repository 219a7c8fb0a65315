package sovereign.csap_test

import rego.v1

import data.sovereign.csap

medium_physical := {
	"country": "KR", "separation": "physical", "external_network_blocked": false, "integrated_audit_log": true,
	"csap": {"grade": "medium", "service_model": "IaaS", "expires": "2029-01-01"},
}

high_site := {
	"country": "KR", "separation": "physical", "external_network_blocked": true, "integrated_audit_log": true,
	"csap": {"grade": "high", "service_model": "IaaS", "expires": "2029-01-01"},
}

low_logical := {
	"country": "KR", "separation": "logical", "external_network_blocked": false, "integrated_audit_log": false,
	"csap": {"grade": "low", "service_model": "IaaS", "expires": "2029-01-01"},
}

uncertified := {"country": "KR", "separation": "logical", "external_network_blocked": false, "integrated_audit_log": false}

job(grade) := {"csap_grade": grade, "deadline": "2027-06-01T00:00:00Z"}

now := "2026-11-22T00:00:00Z"

rules_for(grade, site) := {f.rule |
	some f in csap.violations with input as {"job": job(grade), "sites": {"s": site}, "now": now}
}

test_csap01_grade_too_low_denied if "CSAP-01" in rules_for("medium", low_logical)

test_csap01_uncertified_denied if "CSAP-01" in rules_for("low", uncertified)

test_csap01_sufficient_grade_allowed if not "CSAP-01" in rules_for("medium", medium_physical)

test_no_grade_required_means_no_csap_findings if count(rules_for("none", uncertified)) == 0

test_csap02_logical_separation_denied_for_medium if "CSAP-02" in rules_for("medium", low_logical)

test_csap02_logical_separation_allowed_for_low if not "CSAP-02" in rules_for("low", low_logical)

test_csap03_open_network_denied_for_high if "CSAP-03" in rules_for("high", medium_physical)

test_csap03_blocked_network_and_audit_log_allowed if not "CSAP-03" in rules_for("high", high_site)

test_csap04_saas_capped_by_its_iaas if {
	saas := object.union(high_site, {"csap": {"grade": "high", "service_model": "SaaS", "iaas_grade": "low", "expires": "2029-01-01"}})
	csap.effective_grade(saas) == "low"
	"CSAP-01" in rules_for("high", saas)
}

test_csap04_iaas_keeps_its_grade if csap.effective_grade(high_site) == "high"

test_csap05_expiry_before_deadline_denied if {
	expiring := object.union(medium_physical, {"csap": {"grade": "medium", "service_model": "IaaS", "expires": "2027-03-01"}})
	some f in csap.violations with input as {"job": job("medium"), "sites": {"s": expiring}, "now": now}
	f.rule == "CSAP-05"
	not f.warn_only
}

test_csap05_expiry_within_30_days_warns if {
	expiring := object.union(medium_physical, {"csap": {"grade": "medium", "service_model": "IaaS", "expires": "2026-12-10"}})
	short_job := {"csap_grade": "medium", "deadline": "2026-12-01T00:00:00Z"}
	some f in csap.violations with input as {"job": short_job, "sites": {"s": expiring}, "now": now}
	f.rule == "CSAP-05"
	f.warn_only
}

test_csap05_valid_certificate_allowed if not "CSAP-05" in rules_for("medium", medium_physical)
