# EXC-01: exemptions are explicit, time-boxed, approved and logged, like Azure Policy exemptions.
# An exempted finding does not block the site, but the decision still records it.
package sovereign.exemptions

import rego.v1

import data.sovereign.facts

# Exemptions in force for this tenant now: an approver and a reason are required, and an expired one is void.
in_force contains exemption if {
	some exemption in data.exemptions
	exemption.tenant == input.tenant.tenant_id
	exemption.approver != ""
	exemption.reason != ""
	facts.end_of_day_ns(exemption.expires) >= time.parse_rfc3339_ns(input.now)
}

# An exemption names a rule and may narrow itself to one site.
covers(exemption, finding) if {
	exemption.rule == finding.rule
	object.get(exemption, "site", finding.site) == finding.site
}

for_finding(finding) := matches[0] if {
	matches := [exemption |
		some exemption in in_force
		covers(exemption, finding)
	]
	count(matches) > 0
}
