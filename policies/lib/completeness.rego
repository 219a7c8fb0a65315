# The policy checks the completeness of its own input, so it is safe whoever calls it: each rule names the
# attributes it reads, and one that is missing, null, blank, mistyped or unknown denies under that rule at
# every site, with a finding that names it. The rule bodies then read only well-formed values.
package sovereign.completeness

import rego.v1

import data.sovereign.evidence
import data.sovereign.facts

# What each rule reads, by part of the input (rules.md's "needs" column, and what its readings add).
needs := {
	"RES-01": {"tenant": {"sector"}, "site": {"country"}},
	"CSAP-01": {"job": {"csap_grade"}, "site": {"csap", "country", "ops_staff_country"}},
	"CSAP-02": {"job": {"csap_grade"}, "site": {"separation"}},
	"CSAP-03": {"job": {"csap_grade"}, "site": {"external_network_blocked", "integrated_audit_log"}},
	"CSAP-05": {"job": {"csap_grade", "deadline"}, "request": {"now"}, "site": {"csap"}},
	"N2SF-02": {"job": {"datasets"}, "site": {"operator_type", "operator_country", "country", "internet_facing"}},
	"N2SF-03": {
		"job": {"datasets", "deadline", "internet_egress", "external_ai_apis"},
		"site": {"country", "ops_staff_country", "csap"},
	},
	"PIPA-01": {"job": {"datasets"}, "tenant": {"tenant_id", "transfer_basis"}, "site": {"country"}},
	"PIPA-02": {"job": {"datasets"}, "site": {"country"}},
	"PIPA-03": {"job": {"datasets", "consent_obtained", "purpose"}, "site": {"holds_reid_key"}},
	"PIPA-04": {"job": {"datasets"}, "tenant": {"tenant_id", "rrn_legal_basis"}, "site": {"encryption_at_rest"}},
	"FIN-01": {"job": {"datasets"}, "tenant": {"sector"}, "site": {"country", "management_country"}},
	"FIN-02": {
		"job": {"generative_ai", "internet_egress", "external_ai_apis"},
		"tenant": {"tenant_id", "sector", "sandbox_approval"},
	},
	"FIN-03": {"job": {"importance"}, "tenant": {"sector"}},
	"HLT-01": {"job": {"datasets"}, "site": {"country"}},
	"HLT-02": {"job": {"datasets"}, "tenant": {"tenant_id", "review_board_approval"}, "site": {"closed_environment"}},
	"LOC-01": {"job": {"datasets"}, "tenant": {"export_licences"}, "site": {"country"}},
	"EXP-01": {"site": {"pools"}},
	"EXP-02": {"job": {"kind"}, "tenant": {"tenant_id", "hq_country", "parent_hq_country"}},
	"EXP-03": {"job": {"training_ops", "open_weights"}, "site": {"country"}},
	"SOV-01": {
		"tenant": {"tenant_id", "sovereignty_level"},
		"site": {"country", "operator_country", "ops_staff_country", "management_country"},
	},
	"VER-01": {"tenant": {"tenant_id", "requires_verified_sites"}, "site": {"verified"}},
}

csap_grades := {"low", "medium", "high"}

# How each attribute is well-formed, by kind. Each kind is its own table and check, so an attribute meets
# only its own check: one function over every kind ran every kind's body for each attribute.
countries := {
	"site": {"country", "operator_country", "ops_staff_country", "management_country"},
	"tenant": {"hq_country"},
}

booleans := {
	"site": {
		"internet_facing", "integrated_audit_log", "external_network_blocked", "encryption_at_rest",
		"holds_reid_key", "closed_environment", "verified",
	},
	"tenant": {"rrn_legal_basis", "requires_verified_sites"},
	"job": {"consent_obtained", "generative_ai", "internet_egress", "external_ai_apis", "open_weights"},
}

closed_sets := {
	"site": {"operator_type": {"government", "public", "private"}, "separation": {"physical", "logical"}},
	"tenant": {"sector": facts.known_sectors, "sovereignty_level": {"L1", "L2", "L3"}},
	"job": {
		"kind": {"training", "fine_tuning", "inference", "batch"},
		"csap_grade": {"none"} | csap_grades,
		"purpose": {"service", "statistics", "research", "public_archiving", "commercial"},
		"importance": {"normal", "important"},
	},
}

texts := {"tenant": {"tenant_id"}}

lists := {"tenant": {"transfer_basis", "export_licences"}}

timestamps := {"job": {"deadline"}, "request": {"now"}}

# Attributes whose absence (or null) is a fact: no parent company, no approval on file (blank is none
# too), no certificate, operations not stated. Present, they must be well-formed.
optional_countries := {"tenant": {"parent_hq_country"}}

optional_texts := {"tenant": {"sandbox_approval", "review_board_approval"}}

optional_numbers := {"job": {"training_ops"}}

certificates := {"site": {"csap"}}

pools := {"site": {"pools"}}

dataset_lists := {"job": {"datasets"}}

optional contains sprintf("%s.%s", [part, name]) if {
	some table in [optional_countries, optional_texts, optional_numbers, certificates]
	some part, names in table
	some name in names
}

# Every attribute with a check, by part (what `needs` may name).
checked contains [part, name] if {
	some table in [countries, booleans, texts, lists, timestamps, optional_countries, optional_texts, optional_numbers, certificates, pools, dataset_lists]
	some part, names in table
	some name in names
}

checked contains [part, name] if {
	some part, sets in closed_sets
	some name, _ in sets
}

absent(document, key) if object.get(document, key, null) == null

in_part(table, part) := object.get(table, part, set())

# `document` is an object: facts.job and facts.tenant are whatever the caller sent, and a site that is
# not one lacks everything (site_gaps).
gaps(part, document) := {name |
	some name in in_part(countries, part)
	not evidence.country(document, name)
} | {name |
	some name in in_part(booleans, part)
	not boolean_at(document, name)
} | {name |
	some name, allowed in object.get(closed_sets, part, {})
	not member_at(document, name, allowed)
} | {name |
	some name in in_part(texts, part)
	not evidence.text(document, name)
} | {name |
	some name in in_part(lists, part)
	not array_at(document, name)
} | {name |
	some name in in_part(timestamps, part)
	not evidence.timestamp_ns(document, name)
} | {name |
	some name in in_part(optional_countries, part)
	not absent(document, name)
	not evidence.country(document, name)
} | {name |
	some name in in_part(optional_texts, part)
	not absent(document, name)
	not string_at(document, name)
} | {name |
	some name in in_part(optional_numbers, part)
	not absent(document, name)
	not number_at(document, name)
} | {name |
	some name in in_part(certificates, part)
	not absent(document, name)
	not certificate(document, name)
} | {name |
	some name in in_part(pools, part)
	not pool_list(document, name)
} | {name |
	some name in in_part(dataset_lists, part)
	not dataset_list(document, name)
}

# Each check takes the document and the key: OPA evaluates a reference inside `not` before negating, so
# `not is_boolean(document[name])` is false, not true, when the attribute is absent (`opa test` caught it).
boolean_at(document, key) if is_boolean(document[key])

member_at(document, key, allowed) if document[key] in allowed

array_at(document, key) if is_array(document[key])

string_at(document, key) if is_string(document[key])

number_at(document, key) if is_number(document[key])

certificate(document, key) if {
	value := document[key]
	value.grade in csap_grades
	value.service_model in {"IaaS", "PaaS", "SaaS"}
	evidence.calendar_day(value.expires)
	iaas_grade_stated(value)
}

certificate_or_none(site) if absent(site, "csap")

certificate_or_none(site) if certificate(site, "csap")

iaas_grade_stated(value) if value.service_model == "IaaS"

iaas_grade_stated(value) if value.iaas_grade in csap_grades

pool_list(document, key) if {
	value := document[key]
	is_array(value)
	count(value) > 0
	count([pool | some pool in value; not evidence.country(pool, "accelerator_origin")]) == 0
}

dataset_list(document, key) if {
	value := document[key]
	is_array(value)
	count([dataset | some dataset in value; not well_formed_dataset(dataset)]) == 0
}

well_formed_dataset(dataset) if {
	dataset.n2sf_grade in {"C", "S", "O"}
	is_array(dataset.categories)
	count([category | some category in dataset.categories; not known_category(category)]) == 0
	is_boolean(dataset.personal_info)
	is_boolean(dataset.pseudonymised)
	is_boolean(dataset.contains_rrn)
}

# A category is read in any case and around spaces, as facts.categories reads it.
known_category(value) if {
	is_string(value)
	lower(trim_space(value)) in facts.known_categories
}

# Only the rules that read an attribute find against its absence; `needs` is scanned for a gap only.
reads(rule_parts, part, name) if name in object.get(rule_parts, part, set())

holder_gaps := {"tenant": gaps("tenant", facts.tenant), "job": gaps("job", facts.job), "request": gaps("request", input)}

# The usual case first, in one body: a site whose every checked attribute is well-formed has no gaps.
# The absence checks of `sovereign policy test` fail if this misses an attribute the tables check.
site_gaps(site) := set() if {
	evidence.country(site, "country")
	evidence.country(site, "operator_country")
	evidence.country(site, "ops_staff_country")
	evidence.country(site, "management_country")
	site.operator_type in closed_sets.site.operator_type
	site.separation in closed_sets.site.separation
	is_boolean(site.internet_facing)
	is_boolean(site.integrated_audit_log)
	is_boolean(site.external_network_blocked)
	is_boolean(site.encryption_at_rest)
	is_boolean(site.holds_reid_key)
	is_boolean(site.closed_environment)
	is_boolean(site.verified)
	certificate_or_none(site)
	pool_list(site, "pools")
} else := gaps("site", site) if is_object(site) else := {name | some [part, name] in checked; part == "site"}

holder_names := {"tenant": facts.tenant_name, "job": "the job", "request": "the request"}

violations contains finding if {
	some site_id, site in input.sites
	some name in site_gaps(site)
	some rule_id, rule_parts in needs
	reads(rule_parts, "site", name)
	finding := {"rule": rule_id, "site": site_id, "message": sprintf("%s has no valid %s on file", [site_id, name])}
}

violations contains finding if {
	some part, names in holder_gaps
	some name in names
	some rule_id, rule_parts in needs
	reads(rule_parts, part, name)
	some site_id, _ in input.sites
	finding := {
		"rule": rule_id, "site": site_id,
		"message": sprintf("%s has no valid %s on file", [holder_names[part], name]),
	}
}
