package sovereign.export_test

import rego.v1

import data.sovereign.export

test_chinese_designed_accelerator_denied if {
	some f in export.violations with input as {"sites": {"x": {"pools": [{"accelerator_model": "Ascend 910C", "accelerator_origin": "CN"}]}}}
	f.rule == "EXP-01"
}

test_us_designed_accelerator_allowed if {
	count(export.violations) == 0 with input as {"sites": {"x": {"pools": [{"accelerator_model": "B200", "accelerator_origin": "US"}]}}}
}
