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
		"tenant": "t1", "rule": "RES-01", "site": "tokyo", "expires": "2027-06-30",
		"approver": "cpo@example.go.kr", "reason": "pilot",
	}
	decision := placement.decision with input as public_job with data.exemptions as [exemption]
	verdict(decision, "tokyo").allowed
	verdict(decision, "tokyo").exempted[0].rule == "RES-01"
	verdict(decision, "tokyo").exempted[0].approver == "cpo@example.go.kr"
}

# A rule's mode governs every finding it makes: set to deny, a rule whose catalogue mode is warn denies.
important := fx.request(object.union(fx.job, {"importance": "important"}), fx.tenant("finance"), {"s": fx.korean_site})

frontier := fx.request(object.union(fx.job, {"training_ops": 3e26, "open_weights": false}), fx.tenant("startup"), {"s": fx.foreign_site})

modes_at(request_doc, rules, rule_id) := {f.mode | some f in decision.kept; f.rule == rule_id} if {
	decision := placement.decision with input as request_doc with data.rules as rules
}

test_fin03_in_its_catalogue_mode_warns if modes_at(important, {"FIN-03": {"mode": "warn"}}, "FIN-03") == {"warn"}

test_fin03_set_to_deny_denied if {
	modes_at(important, {"FIN-03": {"mode": "deny"}}, "FIN-03") == {"deny"}
	decision := placement.decision with input as important with data.rules as {"FIN-03": {"mode": "deny"}}
	not verdict(decision, "s").allowed
}

test_exp03_set_to_deny_denied if modes_at(frontier, {"EXP-03": {"mode": "deny"}}, "EXP-03") == {"deny"}

test_exp03_in_dryrun_records_only if modes_at(frontier, {"EXP-03": {"mode": "dryrun"}}, "EXP-03") == {"dryrun"}

# An unknown mode is deny, whatever publication would have said of it.
test_unknown_mode_denied if {
	every mode in ["off", "Warn", "", 0, null, ["warn"]] {
		modes_at(important, {"FIN-03": {"mode": mode}}, "FIN-03") == {"deny"}
	}
}

test_catalogue_entry_that_is_not_an_object_denied if {
	modes_at(important, {"FIN-03": "warn"}, "FIN-03") == {"deny"}
}

# CSAP-05's early warning is a part of the rule with its own mode, held to the weaker of it and the rule's.
early := fx.request(
	object.union(fx.job, {"csap_grade": "low", "deadline": "2026-12-01T00:00:00Z"}),
	fx.tenant("government"),
	{"s": object.union(fx.korean_site, {"csap": {"grade": "high", "service_model": "IaaS", "expires": "2026-12-10"}})},
)

csap05(rule_mode, part_modes) := modes_at(early, {"CSAP-05": {"mode": rule_mode, "part_modes": part_modes}}, "CSAP-05")

test_csap05_early_warning_in_its_catalogue_mode_warns if csap05("deny", {"early_warning": "warn"}) == {"warn"}

test_csap05_early_warning_set_to_deny_denied if csap05("deny", {"early_warning": "deny"}) == {"deny"}

test_csap05_early_warning_follows_a_weaker_rule_mode if {
	csap05("dryrun", {"early_warning": "deny"}) == {"dryrun"}
	csap05("warn", {"early_warning": "deny"}) == {"warn"}
	csap05("warn", {"early_warning": "dryrun"}) == {"dryrun"}
}

test_csap05_early_warning_without_or_with_an_unknown_part_mode_denied if {
	csap05("deny", {}) == {"deny"}
	csap05("deny", {"early_warning": "off"}) == {"deny"}
	modes_at(early, {"CSAP-05": {"mode": "deny"}}, "CSAP-05") == {"deny"}
}
