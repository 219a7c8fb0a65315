package sovereign.export_test

import rego.v1

import data.sovereign.export
import data.sovereign.test_fixtures as fx

with_pool(origin) := object.union(fx.korean_site, {"pools": [{"accelerator_model": "X", "accelerator_origin": origin}]})

rules(job_doc, tenant_doc, site) := found if {
	findings := export.violations with input as fx.request(job_doc, tenant_doc, {"s": site})
	found := fx.rules_at(findings, "s")
}
test_exp01_chinese_designed_accelerator_denied if "EXP-01" in rules(fx.job, fx.tenant("startup"), with_pool("CN"))

test_exp01_us_designed_accelerator_allowed if not "EXP-01" in rules(fx.job, fx.tenant("startup"), with_pool("US"))

d5_parent := object.union(fx.tenant("enterprise"), {"hq_country": "SG", "parent_hq_country": "CN"})

test_exp02_training_for_d5_linked_tenant_denied if {
	found := rules(fx.job, d5_parent, fx.korean_site) with data.country_lists.d5 as ["CN"]
	"EXP-02" in found
}

test_exp02_inference_for_d5_linked_tenant_allowed if {
	inference := object.union(fx.job, {"kind": "inference"})
	found := rules(inference, d5_parent, fx.korean_site) with data.country_lists.d5 as ["CN"]
	not "EXP-02" in found
}

frontier := object.union(fx.job, {"training_ops": 3e26, "open_weights": false})

test_exp03_closed_frontier_weights_abroad_warns if {
	some f in export.violations with input as fx.request(frontier, fx.tenant("startup"), {"s": fx.foreign_site})
	f.rule == "EXP-03"
}

test_exp03_open_weights_allowed if {
	open := object.union(frontier, {"open_weights": true})
	not "EXP-03" in rules(open, fx.tenant("startup"), fx.foreign_site)
}

# Codes in any case: "cn" is China (EXP-01), and so is a tenant's "cn" headquarters (EXP-02).
test_exp01_lower_case_chinese_origin_denied if "EXP-01" in rules(fx.job, fx.tenant("startup"), with_pool("cn"))

test_exp01_hong_kong_design_denied if "EXP-01" in rules(fx.job, fx.tenant("startup"), with_pool("HK"))

test_exp02_lower_case_d5_headquarters_denied if {
	tenant := object.union(fx.tenant("enterprise"), {"hq_country": "cn"})
	"EXP-02" in rules(fx.job, tenant, fx.korean_site)
}

test_exp02_korean_headquarters_without_parent_allowed if not "EXP-02" in rules(fx.job, fx.tenant("enterprise"), fx.korean_site)

# Country Group D:5 includes Hong Kong and Macau (the catalogue's own list, not a test's).
test_exp02_parent_headquartered_in_hong_kong_denied if {
	every place in ["HK", "hk", "MO"] {
		tenant := object.union(fx.tenant("enterprise"), {"hq_country": "KR", "parent_hq_country": place})
		"EXP-02" in rules(fx.job, tenant, fx.korean_site)
	}
}

# What the EAR treats as China for chip design (EXP-01) it treats as China in D:5 too.
test_exp02_every_chinese_design_place_is_in_d5_denied if {
	every place in data.country_lists.chinese_design {
		place in data.country_lists.d5
	}
}
