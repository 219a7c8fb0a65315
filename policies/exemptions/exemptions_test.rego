package sovereign.exemptions_test

import rego.v1

import data.sovereign.exemptions
import data.sovereign.test_fixtures as fx

exemption(fields) := object.union({
	"tenant": "t1", "rule": "RES-01", "expires": "2027-01-31", "approver": "cpo@example.go.kr",
	"reason": "pilot approved by ministry order 2026-114",
}, fields)

finding := {"rule": "RES-01", "site": "tokyo", "message": "m"}

request := fx.request(fx.job, fx.tenant("government"), fx.sites)

exempted(list) := found if {
	found := exemptions.for_finding(finding) with input as request with data.exemptions as list
}

test_exc01_valid_exemption_applies_allowed if exempted([exemption({})]).approver == "cpo@example.go.kr"

test_exc01_expired_exemption_denied if not exempted([exemption({"expires": "2026-11-01"})])

test_exc01_unapproved_exemption_denied if not exempted([exemption({"approver": ""})])

test_exc01_other_tenant_denied if not exempted([exemption({"tenant": "someone-else"})])

test_exc01_other_site_denied if not exempted([exemption({"site": "seoul"})])

test_exc01_blank_approver_or_reason_denied if {
	not exempted([exemption({"approver": "  "})])
	not exempted([exemption({"reason": " "})])
}

# A malformed expiry voids the exemption in every engine, rather than failing the evaluation.
test_exc01_expiry_that_is_not_a_date_denied if {
	not exempted([exemption({"expires": "soon"})])
	not exempted([exemption({"expires": "2027-02-30"})])
	not exempted([exemption({"expires": 20270131})])
}

# The expiry date lasts until 24:00 KST: 15:00 UTC that day.
test_exc01_expiry_lasts_until_midnight_kst_allowed if {
	late := object.union(request, {"now": "2027-01-31T14:59:59Z"})
	found := exemptions.for_finding(finding) with input as late with data.exemptions as [exemption({})]
	found.approver == "cpo@example.go.kr"
}

test_exc01_expiry_over_after_midnight_kst_denied if {
	after := object.union(request, {"now": "2027-01-31T15:00:00Z"})
	not exemptions.for_finding(finding) with input as after with data.exemptions as [exemption({})]
}
