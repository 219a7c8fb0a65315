package sovereign.placement_test

import rego.v1

import data.sovereign.placement
import data.sovereign.test_fixtures as fx

public_job := fx.request(fx.job, fx.tenant("government"), fx.sites)

# One site's share of the flat decision, grouped as the services group it.
verdict(decision, site_id) := {
	"allowed": count(violations) == 0,
	"violations": violations,
	"warnings": [f | some f in decision.kept; f.site == site_id; f.mode != "deny"],
	"exempted": [w | some w in decision.waived; w.site == site_id],
} if {
	violations := [f | some f in decision.kept; f.site == site_id; f.mode == "deny"]
}

test_decision_covers_every_site if {
	decision := placement.decision with input as public_job
	{s | some s in decision.judged} == {"seoul", "tokyo"}
	verdict(decision, "seoul").allowed
	not verdict(decision, "tokyo").allowed
	"RES-01" in {v.rule | some v in verdict(decision, "tokyo").violations}
}

test_warn_mode_reports_without_denying if {
	modes := {"RES-01": {"mode": "warn"}, "PIPA-01": {"mode": "deny"}}
	decision := placement.decision with input as public_job with data.rules as modes
	verdict(decision, "tokyo").allowed
	verdict(decision, "tokyo").warnings[0].mode == "warn"
}

test_dryrun_mode_records_only if {
	decision := placement.decision with input as public_job with data.rules as {"RES-01": {"mode": "dryrun"}}
	verdict(decision, "tokyo").allowed
	verdict(decision, "tokyo").warnings[0].mode == "dryrun"
}

test_rule_without_catalogue_entry_denies if {
	decision := placement.decision with input as public_job with data.rules as {}
	not verdict(decision, "tokyo").allowed
}

test_exemption_waives_and_records if {
	exemption := {
		"tenant": "t1", "rule": "RES-01", "site": "tokyo", "expires": "2027-01-31",
		"approver": "cpo@example.go.kr", "reason": "pilot",
	}
	decision := placement.decision with input as public_job with data.exemptions as [exemption]
	verdict(decision, "tokyo").allowed
	verdict(decision, "tokyo").exempted[0].rule == "RES-01"
	verdict(decision, "tokyo").exempted[0].approver == "cpo@example.go.kr"
}
