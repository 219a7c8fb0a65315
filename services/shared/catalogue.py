"""The default catalogue: AI-factory sites with their pools, and the tenant registry, read from data files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from contracts.envelope import SLUG_PATTERN, Contract
from contracts.events import CapacityOffered


class Budget(Contract):
    """Prepaid credit (for all time) or a monthly cap (KST months), in KRW before discount and VAT."""

    kind: Literal["prepaid", "monthly_cap"]
    amount_krw: int = Field(ge=0)
    alert_percents: list[int] = Field(default_factory=lambda: [50, 80, 100])


class VolumeTier(Contract):
    """Graduated: the GPU-hours of a month that fall in this band get this discount on their charges."""

    up_to_gpu_hours: int | None = Field(default=None, ge=1, description="None: no upper bound.")
    discount_bps: int = Field(ge=0, le=10_000)


class Tenant(Contract):
    tenant_id: str = Field(pattern=SLUG_PATTERN)
    name: str
    sector: Literal["government", "public", "finance", "health", "enterprise", "startup"]
    hq_country: str = Field(min_length=2, max_length=2)
    parent_hq_country: str | None = Field(default=None, min_length=2, max_length=2)
    sovereignty_level: Literal["L1", "L2", "L3"] = "L1"
    # PIPA Art. 28-8 grounds on file for transfers abroad.
    transfer_basis: list[Literal["consent", "law_or_treaty", "contract", "certification", "adequacy"]] = (
        Field(default_factory=list)
    )
    rrn_legal_basis: bool = Field(default=False, description="A law permits it to process RRNs (PIPA 24-2).")
    sandbox_approval: str | None = Field(default=None, description="FSC regulatory-sandbox approval id.")
    review_board_approval: str | None = Field(default=None, description="Data review board approval id.")
    export_licences: list[Literal["map", "core_technology"]] = Field(default_factory=list)
    requires_verified_sites: bool = Field(
        default=False, description="Place only at sites whose attributes a listed auditor signed (VER-01)."
    )
    budget: Budget | None = None
    volume_tiers: list[VolumeTier] = Field(default_factory=list, description="In ascending bands.")


@dataclass(frozen=True)
class Catalogue:
    offers: list[CapacityOffered]
    tenants: dict[str, Tenant]

    @property
    def site_ids(self) -> list[str]:
        return [offer.site.site_id for offer in self.offers]

    def site_offer(self, site_id: str) -> CapacityOffered | None:
        return next((offer for offer in self.offers if offer.site.site_id == site_id), None)


def load_catalogue(directory: Path) -> Catalogue:
    sites = json.loads((directory / "sites.json").read_text(encoding="utf-8"))["sites"]
    tenants = json.loads((directory / "tenants.json").read_text(encoding="utf-8"))["tenants"]
    offers = [CapacityOffered.model_validate(entry) for entry in sites]
    registry = {tenant.tenant_id: tenant for tenant in (Tenant.model_validate(t) for t in tenants)}
    return Catalogue(offers=offers, tenants=registry)
