# Personal Information Protection Act (PIPA). A model of the rules, not legal advice.
package sovereign.pipa

import rego.v1

import data.sovereign.evidence
import data.sovereign.facts

# The five lawful grounds for a transfer abroad (Art. 28-8).
lawful_transfer_bases := {"consent", "law_or_treaty", "contract", "certification", "adequacy"}

tenant_transfer_bases := evidence.lowered(object.get(facts.tenant, "transfer_basis", [])) & lawful_transfer_bases

suspended_countries := {upper(country) | some country in data.country_lists.pipa_suspended}

permitted_pseudonym_purposes := {"statistics", "research", "public_archiving"}

used_without_consent if {
	facts.is_pseudonymised
	facts.job.consent_obtained == false
}

# PIPA-01: personal information (RRNs and pseudonymised data included) at a site outside Korea needs a
# lawful transfer ground on file.
violations contains finding if {
	facts.has_personal_info
	count(tenant_transfer_bases) == 0
	some site_id, site in input.sites
	country := facts.country(site)
	country != "KR"
	finding := {
		"rule": "PIPA-01",
		"site": site_id,
		"message": sprintf("%s is in %s and %s has no lawful ground on file for transferring personal information abroad", [site_id, country, facts.tenant_name]),
	}
}

# PIPA-02: no transfer to a country under a transfer-suspension order (Art. 28-9).
violations contains finding if {
	facts.has_personal_info
	some site_id, site in input.sites
	country := facts.country(site)
	country in suspended_countries
	finding := {
		"rule": "PIPA-02",
		"site": site_id,
		"message": sprintf("%s is in %s, under a personal-information transfer-suspension order", [site_id, country]),
	}
}

# PIPA-03: pseudonymised data used without consent needs a permitted purpose (Art. 28-2) ...
violations contains finding if {
	used_without_consent
	purpose := facts.job.purpose
	is_string(purpose)
	not purpose in permitted_pseudonym_purposes
	some site_id, _ in input.sites
	finding := {
		"rule": "PIPA-03",
		"site": site_id,
		"message": sprintf("pseudonymised data is used without consent for %s, not statistics, research or public archiving", [purpose]),
	}
}

# ... and must not sit where the re-identification key is held (Art. 28-4).
violations contains finding if {
	used_without_consent
	some site_id, site in input.sites
	site.holds_reid_key == true
	finding := {
		"rule": "PIPA-03",
		"site": site_id,
		"message": sprintf("%s holds the re-identification key for pseudonymised data", [site_id]),
	}
}

# PIPA-04: resident registration numbers need a legal basis (Art. 24-2) ...
violations contains finding if {
	facts.contains_rrn
	facts.tenant.rrn_legal_basis == false
	some site_id, _ in input.sites
	finding := {
		"rule": "PIPA-04",
		"site": site_id,
		"message": sprintf("%s has no legal basis on file for processing resident registration numbers", [facts.tenant_name]),
	}
}

# ... and encryption at the site.
violations contains finding if {
	facts.contains_rrn
	some site_id, site in input.sites
	site.encryption_at_rest == false
	finding := {
		"rule": "PIPA-04",
		"site": site_id,
		"message": sprintf("%s does not encrypt data at rest, required for resident registration numbers", [site_id]),
	}
}
