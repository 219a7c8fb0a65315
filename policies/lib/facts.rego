# Facts about the job that several rule families read.
package sovereign.facts

import rego.v1

datasets := object.get(input.job, "datasets", [])

categories := {category |
	some dataset in datasets
	some category in object.get(dataset, "categories", [])
}

has_personal_info if {
	some dataset in datasets
	dataset.personal_info
}

is_pseudonymised if {
	some dataset in datasets
	dataset.pseudonymised
}

contains_rrn if {
	some dataset in datasets
	dataset.contains_rrn
}

site_in_korea(site) if site.country == "KR"

# Certificates, exemptions and the like are valid through the whole of their expiry date.
end_of_day_ns(day) := time.parse_rfc3339_ns(sprintf("%sT23:59:59Z", [day]))
