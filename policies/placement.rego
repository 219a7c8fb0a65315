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

known_modes := {"deny", "warn", "dryrun"}

# A rule without a catalogue entry, or with a mode this policy does not know ("off", a typo, a number),
# denies: publication refuses such a mode, but an engine fed other data must not switch the rule off.
catalogue_mode(rule_id) := mode if {
	mode := data.rules[rule_id].mode
	mode in known_modes
} else := "deny"

# Looked up once per rule found, not once per finding.
rule_modes[rule_id] := catalogue_mode(rule_id) if {
	some f in findings
	rule_id := f.rule
}

strictness := {"dryrun": 0, "warn": 1, "deny": 2}

# A part of a rule with a mode of its own (CSAP-05's early warning) is held to the weaker of that mode and
# its rule's: the rule's mode governs every finding it makes, so dryrun silences the part too, and the part
# blocks only when both say deny. A missing or unknown part mode is deny, as an unknown rule mode is.
part_mode(rule_id, part) := mode if {
	mode := data.rules[rule_id].part_modes[part]
	mode in known_modes
} else := "deny"

mode_of(finding) := weaker(rule_modes[finding.rule], part_mode(finding.rule, finding.part)) if {
	finding.part
} else := rule_modes[finding.rule]

weaker(a, b) := a if strictness[a] <= strictness[b] else := b

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
