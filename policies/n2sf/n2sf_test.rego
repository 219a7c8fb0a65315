package sovereign.n2sf_test

import rego.v1

import data.sovereign.n2sf
import data.sovereign.test_fixtures as fx

graded(grades) := fx.with_datasets([fx.dataset({"n2sf_grade": g}) | some g in grades])

public_closed := object.union(fx.korean_site, {"operator_type": "public"})

private_open := object.union(fx.korean_site, {"internet_facing": true})

rules(job_doc, site) := found if {
	findings := n2sf.violations with input as fx.request(job_doc, fx.tenant("government"), {"s": site})
	found := fx.rules_at(findings, "s")
}
test_n2sf01_highest_grade_wins_denied if {
	n2sf.job_grade == "C" with input as fx.request(graded(["O", "C", "S"]), fx.tenant("public"), {})
	"N2SF-02" in rules(graded(["O", "C"]), private_open)
}

test_n2sf01_open_data_only_allowed if n2sf.job_grade == "O" with input as fx.request(graded(["O"]), fx.tenant("public"), {})

test_n2sf02_c_grade_at_private_internet_site_denied if "N2SF-02" in rules(graded(["C"]), private_open)

test_n2sf02_c_grade_at_public_closed_site_allowed if not "N2SF-02" in rules(graded(["C"]), public_closed)

test_n2sf03_s_grade_abroad_denied if "N2SF-03" in rules(graded(["S"]), fx.foreign_site)

test_n2sf03_s_grade_with_external_ai_apis_denied if {
	"N2SF-03" in rules(object.union(graded(["S"]), {"external_ai_apis": true}), fx.korean_site)
}

test_n2sf03_s_grade_low_csap_denied if {
	low := object.union(fx.korean_site, {"csap": {"grade": "low", "service_model": "IaaS", "expires": "2029-01-01"}})
	"N2SF-03" in rules(graded(["S"]), low)
}

test_n2sf03_s_grade_korean_medium_cloud_allowed if not "N2SF-03" in rules(graded(["S"]), private_open)

# N2SF-03 reads the effective, unexpired grade: a medium certificate that ends before the deadline holds none.
test_n2sf03_s_grade_at_expired_certificate_denied if {
	expired := object.union(fx.korean_site, {"csap": {"grade": "high", "service_model": "IaaS", "expires": "2026-11-01"}})
	"N2SF-03" in rules(graded(["S"]), expired)
}

test_n2sf03_s_grade_certificate_ending_before_deadline_denied if {
	ending := object.union(fx.korean_site, {"csap": {"grade": "high", "service_model": "IaaS", "expires": "2027-05-31"}})
	"N2SF-03" in rules(graded(["S"]), ending)
}

test_n2sf03_s_grade_with_internet_egress_denied if {
	"N2SF-03" in rules(object.union(graded(["S"]), {"internet_egress": true}), fx.korean_site)
}

test_n2sf03_s_grade_certified_site_with_foreign_staff_denied if {
	"N2SF-03" in rules(graded(["S"]), object.union(fx.korean_site, {"ops_staff_country": "US"}))
}

# C-grade data needs what S-grade data needs, and more: raising the grade never allows more.
test_n2sf03_c_grade_needs_what_s_grade_needs_denied if {
	low := object.union(public_closed, {"csap": {"grade": "low", "service_model": "IaaS", "expires": "2029-01-01"}})
	"N2SF-03" in rules(graded(["C"]), low)
}

# "Government or public" means Korean ones.
test_n2sf02_c_grade_at_foreign_public_operator_denied if {
	"N2SF-02" in rules(graded(["C"]), object.union(public_closed, {"operator_country": "US"}))
}
