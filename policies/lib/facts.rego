# Facts about the job and the tenant that several rule families read. They may assume well-formed input:
# the completeness check (completeness.rego) denies under every rule that reads a malformed value.
package sovereign.facts

import rego.v1

import data.sovereign.evidence

# The job and the tenant as objects, whatever the caller sent: an absent part reads as empty.
job := input.job if is_object(input.job) else := {}

tenant := input.tenant if is_object(input.tenant) else := {}

datasets := job.datasets if is_array(job.datasets) else := []

# The data categories the rules know ("general" is data of no special category). contracts.events'
# DATA_CATEGORIES is the same list; any other category makes its dataset malformed (completeness.rego),
# since it could be one a rule should have stopped.
known_categories := {"general", "credit", "unique_id", "emr", "genomic", "map", "core_technology"}

categories contains category if {
	some dataset in datasets
	some category in evidence.lowered(dataset.categories)
}

# Unique identification data includes resident registration numbers (FIN-01).
categories contains "unique_id" if contains_rrn

# Personal information includes resident registration numbers and pseudonymised personal data.
has_personal_info if {
	some dataset in datasets
	some facet in ["personal_info", "pseudonymised", "contains_rrn"]
	dataset[facet] == true
}

is_pseudonymised if {
	some dataset in datasets
	dataset.pseudonymised == true
}

contains_rrn if {
	some dataset in datasets
	dataset.contains_rrn == true
}

# Egress is any internet egress, external AI APIs included.
egress if job.internet_egress == true

egress if job.external_ai_apis == true

deadline_ns := evidence.timestamp_ns(job, "deadline")

now_ns := evidence.timestamp_ns(input, "now")

# A certificate or an exemption must be in force from now through the job's deadline: until the later of
# the two (a deadline already past does not make an expired one valid). Undefined without both times.
in_force_until_ns := max([deadline_ns, now_ns + 1])

tenant_name := evidence.label(tenant, "tenant_id", "the tenant")

sector := evidence.one_of(tenant, "sector", known_sectors)

known_sectors := {"government", "public", "finance", "health", "enterprise", "startup"}

country(site) := evidence.country(site, "country")

in_korea(site) if country(site) == "KR"
