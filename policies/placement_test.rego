package sovereign.placement_test

import rego.v1

import data.sovereign.placement

sites := {
	"seoul": {"country": "KR", "pools": [{"accelerator_model": "B200", "accelerator_origin": "US"}]},
	"tokyo": {"country": "JP", "pools": [{"accelerator_model": "H100", "accelerator_origin": "US"}]},
}

public_job := {
	"job": {"csap_grade": "none", "deadline": "2027-01-01T00:00:00Z"},
	"tenant": {"tenant_id": "mois", "sector": "government"},
	"sites": sites,
	"now": "2026-11-22T00:00:00Z",
}

test_decision_covers_every_site if {
	decision := placement.decision with input as public_job
	count(decision) == 2
	decision.seoul.allowed
	not decision.tokyo.allowed
	decision.tokyo.violations[0].rule == "RES-01"
}

test_warn_mode_reports_without_denying if {
	decision := placement.decision with input as public_job with data.rules as {"RES-01": {"mode": "warn"}}
	decision.tokyo.allowed
	decision.tokyo.warnings[0].mode == "warn"
}

test_dryrun_mode_records_only if {
	decision := placement.decision with input as public_job with data.rules as {"RES-01": {"mode": "dryrun"}}
	decision.tokyo.allowed
	decision.tokyo.warnings[0].mode == "dryrun"
}

test_rule_without_catalogue_entry_denies if {
	decision := placement.decision with input as public_job with data.rules as {}
	not decision.tokyo.allowed
}
