# One decision for every candidate site: which rules each site violates, in which mode, and which
# findings an exemption waived. The answer is flat (findings name their site); the services group it by
# site, which is linear where per-site comprehensions here were quadratic in the number of findings.
package sovereign.placement

import rego.v1

import data.sovereign.exemptions

rule_families := [
	data.sovereign.residency.violations,
	data.sovereign.csap.violations,
	data.sovereign.n2sf.violations,
	data.sovereign.pipa.violations,
	data.sovereign.finance.violations,
	data.sovereign.health.violations,
	data.sovereign.locality.violations,
	data.sovereign.export.violations,
	data.sovereign.sovereignty.violations,
	data.sovereign.verification.violations,
]

findings contains finding if {
	some family in rule_families
	some finding in family
}

# A rule without a catalogue entry denies: an unknown rule must never be silently ignored.
catalogue_mode(rule_id) := data.rules[rule_id].mode if {
	data.rules[rule_id]
} else := "deny"

# Looked up once per rule found, not once per finding.
rule_modes[rule_id] := catalogue_mode(rule_id) if {
	some f in findings
	rule_id := f.rule
}

# Some findings are warnings by nature (a certificate close to expiry); dryrun still wins over them.
mode_of(finding) := "warn" if {
	finding.warn_only
	rule_modes[finding.rule] != "dryrun"
} else := rule_modes[finding.rule]

# Each finding is classified once: waived by an exemption, or kept with its mode. Without exemptions in
# force for the tenant (the usual case) there is nothing to look up per finding.
kept contains {"site": f.site, "rule": f.rule, "message": f.message, "mode": mode_of(f)} if {
	count(exemptions.in_force) == 0
	some f in findings
}

kept contains {"site": f.site, "rule": f.rule, "message": f.message, "mode": mode_of(f)} if {
	count(exemptions.in_force) > 0
	some f in findings
	not exemptions.for_finding(f)
}

waived contains {
	"site": f.site, "rule": f.rule, "message": f.message, "approver": exemption.approver,
	"expires": exemption.expires, "reason": exemption.reason,
} if {
	some f in findings
	exemption := exemptions.for_finding(f)
}

# Arrays built from the sets: the compiled engine leaves an empty partial set undefined, an array is [].
decision := {
	"judged": [site_id | some site_id, _ in input.sites],
	"kept": [f | some f in kept],
	"waived": [w | some w in waived],
}
