"""The default catalogue: AI-factory sites with their pools, and the tenant registry, read from data files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError

from contracts.envelope import SLUG_PATTERN, Contract
from contracts.events import CapacityOffered, KnownCountryCode, NonBlank

ModelT = TypeVar("ModelT", bound=BaseModel)


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
    name: NonBlank
    sector: Literal["government", "public", "finance", "health", "enterprise", "startup"]
    hq_country: KnownCountryCode
    parent_hq_country: KnownCountryCode | None = None
    sovereignty_level: Literal["L1", "L2", "L3"] = "L1"
    # PIPA Art. 28-8 grounds on file for transfers abroad.
    transfer_basis: list[Literal["consent", "law_or_treaty", "contract", "certification", "adequacy"]] = (
        Field(default_factory=list)
    )
    rrn_legal_basis: bool = Field(default=False, description="A law permits it to process RRNs (PIPA 24-2).")
    sandbox_approval: NonBlank | None = Field(default=None, description="FSC regulatory-sandbox approval id.")
    review_board_approval: NonBlank | None = Field(default=None, description="Data review board approval id.")
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


class CatalogueError(ValueError):
    """A catalogue file that cannot be used: which file, which entry, which field, and why."""


def _entries(path: Path, key: str) -> list[Any]:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))[key]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CatalogueError(f"{path}: cannot read its {key!r} list ({error})") from error
    if not isinstance(entries, list):
        raise CatalogueError(f"{path}: {key!r} is not a list")
    return entries


def _validated(model: type[ModelT], path: Path, index: int, entry: Any) -> ModelT:
    try:
        return model.model_validate(entry)
    except ValidationError as error:
        fields: dict[str, Any] = entry if isinstance(entry, dict) else {}
        site = fields.get("site")
        name = fields.get("tenant_id") or (site.get("site_id") if isinstance(site, dict) else None)
        problems = "; ".join(
            f"{'.'.join(map(str, problem['loc'])) or '<entry>'}: {problem['msg']}"
            for problem in error.errors()
        )
        raise CatalogueError(f"{path}: entry {index} ({name or 'unnamed'}) is refused: {problems}") from error


def load_catalogue(directory: Path) -> Catalogue:
    """The sites and the tenant registry, every entry validated: one bad entry refuses the whole file, with
    its reason, rather than running with part of a registry."""
    sites_path, tenants_path = directory / "sites.json", directory / "tenants.json"
    offers = [
        _validated(CapacityOffered, sites_path, index, entry)
        for index, entry in enumerate(_entries(sites_path, "sites"))
    ]
    for index, offer in enumerate(offers):
        if unknown := offer.unknown_countries():
            raise CatalogueError(
                f"{sites_path}: entry {index} ({offer.site.site_id}) has unknown {', '.join(unknown)}"
            )
    tenants = [
        _validated(Tenant, tenants_path, index, entry)
        for index, entry in enumerate(_entries(tenants_path, "tenants"))
    ]
    return Catalogue(offers=offers, tenants={tenant.tenant_id: tenant for tenant in tenants})
