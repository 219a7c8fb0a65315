package sovereign.locality_test

import rego.v1

import data.sovereign.locality
import data.sovereign.test_fixtures as fx

map_job := fx.with_datasets([fx.dataset({"categories": ["map"]})])

rules(tenant_doc, site) := found if {
	findings := locality.violations with input as fx.request(map_job, tenant_doc, {"s": site})
	found := fx.rules_at(findings, "s")
}
test_loc01_map_data_abroad_denied if "LOC-01" in rules(fx.tenant("enterprise"), fx.foreign_site)

test_loc01_map_data_abroad_with_licence_allowed if {
	licensed := object.union(fx.tenant("enterprise"), {"export_licences": ["map"]})
	not "LOC-01" in rules(licensed, fx.foreign_site)
}

test_loc01_map_data_in_korea_allowed if not "LOC-01" in rules(fx.tenant("enterprise"), fx.korean_site)
