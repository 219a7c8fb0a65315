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
