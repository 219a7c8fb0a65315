# One decision for every candidate site: which rules each site violates, in which mode, and which
# findings an exemption waived.
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

# Some findings are warnings by nature (a certificate close to expiry); dryrun still wins over them.
mode_of(finding) := "warn" if {
	finding.warn_only
	catalogue_mode(finding.rule) != "dryrun"
} else := catalogue_mode(finding.rule)

# Each finding is classified once (waived by an exemption, or kept with its mode); the verdicts then only
# select by site. Classifying per site instead repeated the exemption lookup for every site.
kept contains {"site": f.site, "rule": f.rule, "message": f.message, "mode": mode_of(f)} if {
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

verdict(site_id) := {
	"allowed": count(denials) == 0,
	"violations": denials,
	"warnings": [{"rule": f.rule, "message": f.message, "mode": f.mode} |
		some f in kept
		f.site == site_id
		f.mode != "deny"
	],
	"exempted": [object.remove(w, ["site"]) | some w in waived; w.site == site_id],
} if {
	denials := [{"rule": f.rule, "message": f.message, "mode": f.mode} |
		some f in kept
		f.site == site_id
		f.mode == "deny"
	]
}

decision := {site_id: verdict(site_id) | some site_id, _ in input.sites}
