# One decision for every candidate site: which rules each site violates, in which mode.
package sovereign.placement

import rego.v1

findings contains finding if some finding in data.sovereign.residency.violations

findings contains finding if some finding in data.sovereign.csap.violations

findings contains finding if some finding in data.sovereign.export.violations

# A rule without a catalogue entry denies: an unknown rule must never be silently ignored.
catalogue_mode(rule_id) := data.rules[rule_id].mode if {
	data.rules[rule_id]
} else := "deny"

# Some findings are warnings by nature (a certificate close to expiry); dryrun still wins over them.
mode_of(finding) := "warn" if {
	finding.warn_only
	catalogue_mode(finding.rule) != "dryrun"
} else := catalogue_mode(finding.rule)

site_findings(site_id) := [{"rule": f.rule, "message": f.message, "mode": mode_of(f)} |
	some f in findings
	f.site == site_id
]

verdict(site_id) := {
	"allowed": count(denials) == 0,
	"violations": denials,
	"warnings": [f | some f in site_findings(site_id); f.mode != "deny"],
} if {
	denials := [f | some f in site_findings(site_id); f.mode == "deny"]
}

decision := {site_id: verdict(site_id) | some site_id, _ in input.sites}
