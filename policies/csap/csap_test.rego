package sovereign.csap_test

import rego.v1

import data.sovereign.csap
import data.sovereign.test_fixtures as fx

medium_physical := object.union(fx.korean_site, {
	"external_network_blocked": false,
	"csap": {"grade": "medium", "service_model": "IaaS", "expires": "2029-01-01"},
})

high_site := fx.korean_site

low_logical := object.union(fx.korean_site, {
	"separation": "logical", "external_network_blocked": false, "integrated_audit_log": false,
	"csap": {"grade": "low", "service_model": "IaaS", "expires": "2029-01-01"},
})

uncertified := object.remove(low_logical, ["csap"])

job(grade) := object.union(fx.job, {"csap_grade": grade})

rules_for(grade, site) := found if {
	findings := csap.violations with input as fx.request(job(grade), fx.tenant("government"), {"s": site})
	found := fx.rules_at(findings, "s")
}
test_csap01_grade_too_low_denied if "CSAP-01" in rules_for("medium", low_logical)

test_csap01_uncertified_site_denied if "CSAP-01" in rules_for("low", uncertified)

test_csap01_sufficient_grade_allowed if not "CSAP-01" in rules_for("medium", medium_physical)

test_csap01_no_grade_required_allowed if count(rules_for("none", uncertified)) == 0

test_csap02_logical_separation_for_medium_denied if "CSAP-02" in rules_for("medium", low_logical)

test_csap02_logical_separation_for_low_allowed if not "CSAP-02" in rules_for("low", low_logical)

test_csap03_open_network_for_high_denied if "CSAP-03" in rules_for("high", medium_physical)

test_csap03_blocked_network_and_audit_log_allowed if not "CSAP-03" in rules_for("high", high_site)

test_csap04_saas_capped_by_its_iaas_denied if {
	saas := object.union(high_site, {"csap": {
		"grade": "high", "service_model": "SaaS", "iaas_grade": "low",
		"expires": "2029-01-01",
	}})
	csap.effective_grade(saas) == "low"
	"CSAP-01" in rules_for("high", saas)
}

test_csap04_iaas_keeps_its_grade_allowed if csap.effective_grade(high_site) == "high"

test_csap05_expiry_before_deadline_denied if {
	expiring := object.union(medium_physical, {"csap": {"grade": "medium", "service_model": "IaaS", "expires": "2027-03-01"}})
	some f in csap.violations with input as fx.request(job("medium"), fx.tenant("government"), {"s": expiring})
	f.rule == "CSAP-05"
	not f.part
}

test_csap05_expiry_within_30_days_warns if {
	expiring := object.union(medium_physical, {"csap": {"grade": "medium", "service_model": "IaaS", "expires": "2026-12-10"}})
	short_job := object.union(job("medium"), {"deadline": "2026-12-01T00:00:00Z"})
	some f in csap.violations with input as fx.request(short_job, fx.tenant("government"), {"s": expiring})
	f.rule == "CSAP-05"
	f.part == "early_warning"
}

test_csap05_valid_certificate_allowed if not "CSAP-05" in rules_for("medium", medium_physical)

# Every CSAP grade needs the site and its operations staff in Korea.
test_csap01_certified_site_abroad_denied if "CSAP-01" in rules_for("low", object.union(high_site, {"country": "JP"}))

test_csap01_foreign_operations_staff_denied if {
	"CSAP-01" in rules_for("low", object.union(high_site, {"ops_staff_country": "US"}))
}

# A certificate lasts until 24:00 KST on its expiry date: 15:00 UTC that day.
expiring_on(day) := object.union(medium_physical, {"csap": {"grade": "medium", "service_model": "IaaS", "expires": day}})

deadline_rules(deadline) := found if {
	due := object.union(job("medium"), {"deadline": deadline})
	findings := csap.violations with input as fx.request(due, fx.tenant("government"), {"s": expiring_on("2027-03-01")})
	found := {f.rule | some f in findings; not f.part}
}

test_csap05_deadline_before_midnight_kst_allowed if not "CSAP-05" in deadline_rules("2027-03-01T14:59:59Z")

test_csap05_deadline_after_midnight_kst_denied if "CSAP-05" in deadline_rules("2027-03-01T15:00:01Z")

test_csap05_deadline_in_kst_after_midnight_denied if "CSAP-05" in deadline_rules("2027-03-02T00:00:01+09:00")

# Valid now too: a certificate that expired yesterday is denied even for a deadline before it expired, and
# gives N2SF-03 no grade (an OPA client may send any deadline).
test_csap05_certificate_expired_before_now_denied if {
	past_due := object.union(job("medium"), {"deadline": "2026-11-01T00:00:00Z"})
	findings := csap.violations with input as fx.request(past_due, fx.tenant("government"), {"s": expiring_on("2026-11-20")})
	{f.rule | some f in findings; not f.part} == {"CSAP-05"}
	csap.unexpired_grade(expiring_on("2026-11-20")) == "none" with input as fx.request(past_due, fx.tenant("government"), {})
}

test_csap05_certificate_ending_tonight_is_valid_today if {
	due := object.union(job("medium"), {"deadline": "2026-11-22T09:00:00Z"})
	findings := csap.violations with input as fx.request(due, fx.tenant("government"), {"s": expiring_on("2026-11-22")})
	{f.rule | some f in findings; not f.part} == set()
}
