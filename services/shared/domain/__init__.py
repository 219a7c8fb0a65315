"""What the services share of the marketplace's domain, apart from the plumbing around it: money and
periods in KST, the catalogue of sites and tenants, who signed what (envelope signatures, site and placement
attestations), and the policy (its bundle, its engines, its tests, the verdict cache)."""
