package sovereign.exemptions_test

import rego.v1

import data.sovereign.exemptions
import data.sovereign.test_fixtures as fx

exemption(fields) := object.union({
	"tenant": "t1", "rule": "RES-01", "expires": "2027-06-30", "approver": "cpo@example.go.kr",
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

# An exemption must be in force for the whole job, from now through its deadline (2027-06-01 in the
# fixtures), as a certificate must: one that lapses before the deadline waives nothing.
test_exc01_exemption_lapsing_before_the_deadline_denied if {
	not exempted([exemption({"expires": "2027-05-31"})])
	not exempted([exemption({"expires": "2026-12-01"})])
}

test_exc01_exemption_lasting_past_the_deadline_allowed if exempted([exemption({"expires": "2027-06-01"})])

due(deadline, now) := object.union(request, {"job": object.union(fx.job, {"deadline": deadline}), "now": now})

exempted_for(deadline, now) := found if {
	found := exemptions.for_finding(finding) with input as due(deadline, now)
		with data.exemptions as [exemption({"expires": "2027-01-31"})]
}

# The expiry date lasts until 24:00 KST: 15:00 UTC that day.
test_exc01_expiry_lasts_until_midnight_kst_allowed if {
	exempted_for("2027-01-31T14:59:59Z", "2026-11-22T00:00:00Z").approver == "cpo@example.go.kr"
}

test_exc01_deadline_after_midnight_kst_denied if not exempted_for("2027-01-31T15:00:01Z", "2026-11-22T00:00:00Z")

test_exc01_deadline_in_kst_after_midnight_denied if not exempted_for("2027-02-01T00:00:01+09:00", "2026-11-22T00:00:00Z")

# In force now too: a deadline already past does not revive an exemption that has lapsed.
test_exc01_expiry_over_after_midnight_kst_denied if not exempted_for("2027-01-01T00:00:00Z", "2027-01-31T15:00:00Z")

# Without a readable deadline the exemption's span cannot be checked, so it waives nothing.
test_exc01_job_without_a_deadline_denied if {
	undated := fx.request(object.remove(fx.job, ["deadline"]), fx.tenant("government"), fx.sites)
	not exemptions.for_finding(finding) with input as undated with data.exemptions as [exemption({})]
}
