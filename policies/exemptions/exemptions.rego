# EXC-01: exemptions are explicit, time-boxed, approved and logged, like Azure Policy exemptions.
# An exempted finding does not block the site, but the decision still records it.
package sovereign.exemptions

import rego.v1

import data.sovereign.evidence
import data.sovereign.facts

# Exemptions in force for this tenant for the whole job: a rule, an approver and a reason are required, and
# it must last from now through the job's deadline, as a certificate must (it lasts until 24:00 KST on its
# expiry date). One that lapses before the deadline, or a malformed one, is void.
in_force contains exemption if {
	some exemption in data.exemptions
	evidence.text(exemption, "tenant") == evidence.text(facts.tenant, "tenant_id")
	evidence.text(exemption, "rule")
	evidence.text(exemption, "approver")
	evidence.text(exemption, "reason")
	evidence.date_end_ns(exemption, "expires") >= facts.in_force_until_ns
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
