# Personal Information Protection Act (PIPA). A model of the rules, not legal advice.
package sovereign.pipa

import rego.v1

import data.sovereign.facts

# The five lawful grounds for a transfer abroad (Art. 28-8).
lawful_transfer_bases := {"consent", "law_or_treaty", "contract", "certification", "adequacy"}

tenant_transfer_bases := {basis |
	some basis in object.get(input.tenant, "transfer_basis", [])
	basis in lawful_transfer_bases
}

suspended_countries := {country | some country in data.country_lists.pipa_suspended}

permitted_pseudonym_purposes := {"statistics", "research", "public_archiving"}

used_without_consent if {
	facts.is_pseudonymised
	not input.job.consent_obtained
}

# PIPA-01: personal information at a site outside Korea needs a lawful transfer ground on file.
violations contains finding if {
	facts.has_personal_info
	count(tenant_transfer_bases) == 0
	some site_id, site in input.sites
	not facts.site_in_korea(site)
	finding := {
		"rule": "PIPA-01",
		"site": site_id,
		"message": sprintf("%s is in %s and %s has no lawful ground on file for transferring personal information abroad", [site_id, site.country, input.tenant.tenant_id]),
	}
}

# PIPA-02: no transfer to a country under a transfer-suspension order (Art. 28-9).
violations contains finding if {
	facts.has_personal_info
	some site_id, site in input.sites
	site.country in suspended_countries
	finding := {
		"rule": "PIPA-02",
		"site": site_id,
		"message": sprintf("%s is in %s, under a personal-information transfer-suspension order", [site_id, site.country]),
	}
}

# PIPA-03: pseudonymised data used without consent needs a permitted purpose (Art. 28-2) ...
violations contains finding if {
	used_without_consent
	not input.job.purpose in permitted_pseudonym_purposes
	some site_id, _ in input.sites
	finding := {
		"rule": "PIPA-03",
		"site": site_id,
		"message": sprintf("pseudonymised data is used without consent for %s, not statistics, research or public archiving", [input.job.purpose]),
	}
}

# ... and must not sit where the re-identification key is held (Art. 28-4).
violations contains finding if {
	used_without_consent
	some site_id, site in input.sites
	site.holds_reid_key
	finding := {
		"rule": "PIPA-03",
		"site": site_id,
		"message": sprintf("%s holds the re-identification key for pseudonymised data", [site_id]),
	}
}

# PIPA-04: resident registration numbers need a legal basis (Art. 24-2) ...
violations contains finding if {
	facts.contains_rrn
	not object.get(input.tenant, "rrn_legal_basis", false)
	some site_id, _ in input.sites
	finding := {
		"rule": "PIPA-04",
		"site": site_id,
		"message": sprintf("%s has no legal basis on file for processing resident registration numbers", [input.tenant.tenant_id]),
	}
}

# ... and encryption at the site.
violations contains finding if {
	facts.contains_rrn
	some site_id, site in input.sites
	not site.encryption_at_rest
	finding := {
		"rule": "PIPA-04",
		"site": site_id,
		"message": sprintf("%s does not encrypt data at rest, required for resident registration numbers", [site_id]),
	}
}
