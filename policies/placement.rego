# One decision for every candidate site: which rules each site violates, in which mode, and which
# findings an exemption waived. The answer is flat (findings name their site); the services group it by
# site, which is linear where per-site comprehensions here were quadratic in the number of findings.
package sovereign.placement

import rego.v1

import data.sovereign.exemptions

rule_families := [
	data.sovereign.completeness.violations,
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

# An array: the families' findings differ by rule, so a set would only hash them all to find no duplicate.
findings := [finding | some family in rule_families; some finding in family]

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
# force for the tenant (the usual case) there is nothing to look up per finding. `kept` is an array built
# straight from the findings: another set of the same objects would only hash them all again.
no_exemption_in_force if count(exemptions.in_force) == 0

not_waived(f) if no_exemption_in_force

not_waived(f) if {
	not no_exemption_in_force
	not exemptions.for_finding(f)
}

kept := [{"site": f.site, "rule": f.rule, "message": f.message, "mode": mode_of(f)} |
	some f in findings
	not_waived(f)
]

# A set, unlike `kept`: the compiled engine puts undefined entries in an array whose comprehension calls
# a function that is undefined for most findings (the parity test caught it).
waived contains {
	"site": f.site, "rule": f.rule, "message": f.message, "approver": exemption.approver,
	"expires": exemption.expires, "reason": exemption.reason,
} if {
	not no_exemption_in_force
	some f in findings
	exemption := exemptions.for_finding(f)
}

decision := {
	"judged": [site_id | some site_id, _ in input.sites],
	"kept": kept,
	# An array built from the set: the compiled engine leaves an empty partial set undefined.
	"waived": [w | some w in waived],
}
