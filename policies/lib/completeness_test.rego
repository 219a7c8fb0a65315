package sovereign.completeness_test

import rego.v1

import data.sovereign.completeness
import data.sovereign.test_fixtures as fx

# The absence of every required attribute is checked by `sovereign policy test` (run_rego_tests); these
# pin what a check of that kind cannot: malformed values, and the meaning of optional ones.
rules_at(request, site_id) := found if {
	findings := completeness.violations with input as request
	found := fx.rules_at(findings, site_id)
}

with_site(fields) := fx.request(fx.job, fx.tenant("enterprise"), {"s": object.union(fx.korean_site, fields)})

test_every_attribute_a_rule_reads_has_a_check if {
	unchecked := {[part, name] |
		some _, parts in completeness.needs
		some part, names in parts
		some name in names
		not [part, name] in completeness.checked
	}
	count(unchecked) == 0
}

test_complete_request_has_no_gaps if {
	findings := completeness.violations with input as fx.complete_request
	count(findings) == 0
}

test_lower_case_country_is_read_as_upper_case if count(rules_at(with_site({"country": "kr"}), "s")) == 0

test_unknown_country_code_denied if "RES-01" in rules_at(with_site({"country": "XX"}), "s")

test_blank_country_denied if "SOV-01" in rules_at(with_site({"country": "  "}), "s")

test_null_attribute_denied if "PIPA-04" in rules_at(with_site({"encryption_at_rest": null}), "s")

test_string_for_a_boolean_denied if "N2SF-02" in rules_at(with_site({"internet_facing": "false"}), "s")

test_odd_case_enum_denied if "N2SF-02" in rules_at(with_site({"operator_type": "Government"}), "s")

test_certificate_without_expiry_denied if {
	site := object.union(object.remove(fx.korean_site, ["csap"]), {"csap": {"grade": "high", "service_model": "IaaS"}})
	found := rules_at(fx.request(fx.job, fx.tenant("enterprise"), {"s": site}), "s")
	count({"CSAP-01", "CSAP-05", "N2SF-03"} - found) == 0
}

test_saas_certificate_without_iaas_grade_denied if {
	"CSAP-01" in rules_at(with_site({"csap": {"grade": "high", "service_model": "SaaS", "expires": "2029-01-01"}}), "s")
}

test_impossible_expiry_date_denied if {
	"CSAP-05" in rules_at(with_site({"csap": {"grade": "high", "service_model": "IaaS", "expires": "2027-02-29"}}), "s")
}

test_uncertified_site_is_complete if count(rules_at(with_site({"csap": null}), "s")) == 0

test_pool_without_origin_denied if {
	"EXP-01" in rules_at(with_site({"pools": [{"accelerator_model": "B200"}]}), "s")
}

test_site_without_pools_denied if "EXP-01" in rules_at(with_site({"pools": []}), "s")

test_site_that_is_not_an_object_denied if {
	found := rules_at(fx.request(fx.job, fx.tenant("enterprise"), {"s": "KR"}), "s")
	count({"RES-01", "EXP-01", "SOV-01", "VER-01"} - found) == 0
}

test_tenant_without_sector_denied_everywhere if {
	tenant := object.remove(fx.tenant("government"), ["sector"])
	every site_id in ["seoul", "tokyo"] {
		"RES-01" in rules_at(fx.request(fx.job, tenant, fx.sites), site_id)
	}
}

test_missing_tenant_denied_everywhere if {
	found := rules_at({"job": fx.job, "sites": fx.sites, "now": fx.now}, "seoul")
	count({"RES-01", "EXP-02", "SOV-01"} - found) == 0
}

test_infinite_or_text_training_ops_denied if {
	job := object.union(fx.job, {"training_ops": "1e27"})
	"EXP-03" in rules_at(fx.request(job, fx.tenant("startup"), fx.sites), "seoul")
}

test_dataset_without_facets_denied if {
	job := fx.with_datasets([{"name": "d"}])
	found := rules_at(fx.request(job, fx.tenant("startup"), fx.sites), "seoul")
	count({"N2SF-02", "PIPA-01", "HLT-01", "LOC-01"} - found) == 0
}

# Under every rule that reads datasets, at Korean sites too: a category the rules do not know could be one
# that should have kept the job in Korea.
test_unknown_or_mistyped_category_denied if {
	every category in ["medical_records", "ｅｍｒ", 42, null, ["emr"], {"emr": true}] {
		job := fx.with_datasets([fx.dataset({"categories": ["general", category]})])
		found := rules_at(fx.request(job, fx.tenant("health"), fx.sites), "seoul")
		count({"N2SF-02", "PIPA-01", "FIN-01", "HLT-01", "HLT-02", "LOC-01"} - found) == 0
	}
}

test_known_category_in_odd_case_is_well_formed if {
	job := fx.with_datasets([fx.dataset({"categories": [" EMR", "Core_Technology ", "general"]})])
	count(rules_at(fx.request(job, fx.tenant("health"), fx.sites), "seoul")) == 0
}

test_deadline_that_is_not_a_time_denied if {
	job := object.union(fx.job, {"csap_grade": "low", "deadline": "next week"})
	"CSAP-05" in rules_at(fx.request(job, fx.tenant("startup"), fx.sites), "seoul")
}

test_approval_of_the_wrong_type_denied if {
	tenant := object.union(fx.tenant("finance"), {"sandbox_approval": 7})
	"FIN-02" in rules_at(fx.request(fx.job, tenant, fx.sites), "seoul")
}
