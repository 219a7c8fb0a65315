"""Data contracts of every event in the flow. Money is integer KRW (the won has no minor unit)."""

from __future__ import annotations

import uuid
from datetime import date
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

import iso3166
from pydantic import AfterValidator, AwareDatetime, BeforeValidator, Field, StringConstraints, model_validator

from contracts.envelope import SLUG_PATTERN, Contract, Event, Inbound, UuidText
from contracts.limits import (
    MAX_ASSUMPTION_LENGTH,
    MAX_ASSUMPTIONS,
    MAX_CLIENT_REQUEST_ID_LENGTH,
    MAX_DATASETS,
    MAX_MODEL_LENGTH,
    MAX_NAME_LENGTH,
    MAX_POOLS_PER_SITE,
    MAX_REASON_LENGTH,
    MAX_REGION_LENGTH,
    MAX_REGIONS,
)

Slug = str

# ISO 3166-1 alpha-2, as the iso3166 package lists it (Kosovo's user-assigned XK included).
ISO_COUNTRIES: frozenset[str] = frozenset(iso3166.countries_by_alpha2)

COUNTRY_PATTERN = r"^[A-Za-z]{2}$"


def _upper_case(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


# A country code in any case on input, upper case once parsed. Whether it is on the ISO list is checked
# where a refusal can be answered (`unknown_countries`) and by the policy, which denies an unknown code.
CountryCode = Annotated[
    str,
    BeforeValidator(_upper_case),
    Field(
        pattern=COUNTRY_PATTERN,
        description="ISO 3166-1 alpha-2 country code, in any case.",
        # Stated again for the schema, which leaves out the pattern of a type with a before-validator.
        json_schema_extra={"pattern": COUNTRY_PATTERN},
    ),
]


def unknown_country(code: str) -> bool:
    return code not in ISO_COUNTRIES


def _on_the_list(code: str) -> str:
    if unknown_country(code):
        raise ValueError(f"{code!r} is not an ISO 3166-1 alpha-2 country code")
    return code


# A country code that must be on the list where it is read (the tenant registry).
KnownCountryCode = Annotated[CountryCode, AfterValidator(_on_the_list)]


# A name read in any case and around spaces (a region, a data category): compared as lower case without
# them, so that a job excluding "Seoul " never runs in seoul.
Lowered = Annotated[str, StringConstraints(strip_whitespace=True, to_lower=True)]

# An id or an approval on file: blank is none.
NonBlank = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
# A name people read: at least one character that is not white space.
Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH, pattern=r"\S")]
# A region as a request or an offer names it.
Region = Annotated[Lowered, StringConstraints(min_length=1, max_length=MAX_REGION_LENGTH)]

ChargeModel = Literal["gpu_hour", "tokens"]
# Billing periods are calendar months in Korea Standard Time.
PERIOD_PATTERN = r"^(\d{4}-(0[1-9]|1[0-2]))?$"
CsapGrade = Literal["none", "low", "medium", "high"]
RuleMode = Literal["deny", "warn", "dryrun"]

# Namespace for job ids derived from (tenant, client request id): a resubmission maps to the same job.
JOB_ID_NAMESPACE = uuid.UUID("6f1c2a4e-8d0b-4c55-9a57-3b7d2f0e9c11")


def job_id_for(tenant_id: str, client_request_id: str) -> uuid.UUID:
    return uuid.uuid5(JOB_ID_NAMESPACE, f"{tenant_id}/{client_request_id}")


# A request's priority class: the queue's order, and at a Slurm site the QOS its run is submitted under.
Priority = Literal["low", "normal", "high", "urgent"]


class JobKind(StrEnum):
    TRAINING = "training"
    FINE_TUNING = "fine_tuning"
    INFERENCE = "inference"
    BATCH = "batch"


# The data categories the policies know ("general": no special category); the policy's
# facts.known_categories is the same list. Any other is refused, in any case: a category no rule knows
# could be one that a rule should have stopped.
DATA_CATEGORIES = frozenset({"general", "credit", "unique_id", "emr", "genomic", "map", "core_technology"})


def _known_category(category: str) -> str:
    if category not in DATA_CATEGORIES:
        known = ", ".join(sorted(DATA_CATEGORIES))
        raise ValueError(f"{category!r} is not a data category the policies know ({known})")
    return category


class Dataset(Inbound):
    name: Name
    n2sf_grade: Literal["C", "S", "O"] = Field(default="O", description="N2SF data grade.")
    categories: list[Annotated[Lowered, AfterValidator(_known_category)]] = Field(
        default_factory=list,
        max_length=len(DATA_CATEGORIES),
        description="Any of general, credit, unique_id, emr, genomic, map, core_technology, in any case; "
        "any other is refused.",
    )
    personal_info: bool = False
    pseudonymised: bool = Field(default=False, description="Pseudonymised personal information (PIPA 28-2).")
    contains_rrn: bool = Field(default=False, description="Holds resident registration numbers (PIPA 24-2).")


class JobRequest(Inbound):
    tenant_id: Slug = Field(pattern=SLUG_PATTERN)
    client_request_id: str = Field(
        min_length=1, max_length=MAX_CLIENT_REQUEST_ID_LENGTH, description="Idempotency key per tenant."
    )
    name: Name
    kind: JobKind
    gpu_count: int = Field(ge=1, le=1_000_000)
    accelerator_model: str | None = Field(
        default=None, min_length=1, max_length=MAX_MODEL_LENGTH, description="e.g. B200; None = any."
    )
    min_generation: int | None = Field(default=None, ge=1, description="Minimum accelerator generation.")
    expected_hours: float = Field(gt=0, le=8760)
    max_price_krw_per_gpu_hour: int | None = Field(default=None, ge=1)
    deadline: AwareDatetime
    csap_grade: CsapGrade = Field(default="none", description="CSAP grade the job's system requires.")
    datasets: list[Dataset] = Field(default_factory=list, max_length=MAX_DATASETS)
    purpose: Literal["service", "statistics", "research", "public_archiving", "commercial"] = "service"
    consent_obtained: bool = Field(default=False, description="Data subjects consented to this use.")
    generative_ai: bool = False
    internet_egress: bool = Field(default=False, description="The job reaches the internet.")
    external_ai_apis: bool = Field(default=False, description="The job calls external AI services.")
    importance: Literal["normal", "important"] = Field(default="normal", description="FSS 'important' work.")
    training_ops: float | None = Field(default=None, ge=0, description="Total training operations, if known.")
    open_weights: bool = False
    preferred_regions: list[Region] = Field(
        default_factory=list,
        max_length=MAX_REGIONS,
        description="Ranked after price and energy; in any case.",
    )
    excluded_regions: list[Region] = Field(
        default_factory=list,
        max_length=MAX_REGIONS,
        description="Never placed in these regions; in any case.",
    )
    priority: Priority = Field(
        default="normal", description="Queue order: priority class first, then arrival."
    )
    max_attempts: int = Field(
        default=1,
        ge=1,
        le=5,
        description="Runs allowed: a failed run is retried on another allowed site until this many ran.",
    )

    @property
    def job_id(self) -> uuid.UUID:
        return job_id_for(self.tenant_id, self.client_request_id)

    def policy_document(self) -> dict[str, Any]:
        """The job as the policy reads it (the input's `job`); decisions refer to it by job_sha256."""
        return self.model_dump(mode="json", exclude_none=True)


class RuleViolation(Contract):
    rule: str
    message: str
    mode: RuleMode


class SiteAssessment(Contract):
    """Why one site was or was not chosen: the policy verdict and the capacity facts, side by side."""

    site_id: Slug
    policy_allowed: bool
    violations: list[RuleViolation] = Field(
        default_factory=list, description="Rules in deny mode that failed."
    )
    warnings: list[RuleViolation] = Field(default_factory=list, description="Warn and dryrun findings.")
    exempted: list[ExemptedFinding] = Field(default_factory=list, description="Findings waived by exemption.")
    capacity_reasons: list[str] = Field(
        default_factory=list, description="Why no pool here fits, if none does."
    )
    pool_id: Slug | None = Field(default=None, description="The pool that fits best here, if any.")
    price_krw_per_gpu_hour: int | None = None
    rank: int | None = Field(default=None, description="1 = chosen; sites that fit, ordered by the ranking.")
    fit: Literal["now", "later", "never"] | None = Field(
        default=None,
        description="Capacity, policy aside: a pool here could take the job now, could once GPUs free up "
        "(or its maintenance ends), or never could for this job. Absent from decisions before 1.5.",
    )
    energy_kwh_per_gpu_hour: float | None = Field(
        default=None,
        ge=0,
        description="Facility energy per GPU-hour of the pool that fits best here (power per GPU times PUE): "
        "the ranking's first tie-break after price.",
    )
    region_preferred: bool | None = Field(
        default=None,
        description="Whether the pool that fits best here is in a region the job prefers: the ranking's "
        "next tie-break, before site and pool ids.",
    )


class Explanation(Contract):
    decision_id: uuid.UUID
    policy_revision: str
    summary: str
    sites: list[SiteAssessment]


class PlacementClaim(Contract):
    """What the marketplace attests about one placed run."""

    job_id: uuid.UUID
    tenant_id: Slug
    attempt: int = Field(ge=1)
    site_id: Slug
    pool_id: Slug
    site_attributes_sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 of the site's attributes as offered, in the canonical form an auditor signs.",
    )
    site_verified_by: str | None = Field(description="The auditor key whose signature over them verified.")
    policy_revision: str
    decision_id: uuid.UUID
    placed_at: AwareDatetime


class PlacementAttestation(Contract):
    """The claim, signed (Ed25519 over its canonical JSON) by a marketplace key in the keyring."""

    claim: PlacementClaim
    key_id: str = Field(min_length=1, max_length=200)
    signature: str = Field(min_length=1, max_length=200)


class JobPlaced(Contract):
    job_id: uuid.UUID
    tenant_id: Slug
    client_request_id: str
    job_name: str
    kind: JobKind
    site_id: Slug
    pool_id: Slug
    accelerator_model: str
    gpu_count: int = Field(ge=1)
    expected_hours: float = Field(gt=0)
    price_krw_per_gpu_hour: int = Field(ge=0, description="Locked at placement; billing rates with it.")
    explanation: Explanation
    attempt: int = Field(default=1, ge=1, description="Which run of the job this is; >1 after failed runs.")
    price_krw_per_million_input_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Set (with the output price) for an inference run on a token-priced pool.",
    )
    price_krw_per_million_output_tokens: int | None = Field(default=None, ge=1)
    failed_sites: list[Slug] = Field(
        default_factory=list, description="Sites where earlier runs of this job failed, in order."
    )
    attestation: PlacementAttestation | None = Field(
        default=None, description="The marketplace's signed statement of this placement; `sovereign attest`."
    )
    priority: Priority = Field(default="normal", description="The request's priority class (since 1.7).")
    deadline: AwareDatetime | None = Field(
        default=None, description="The request's deadline, for the factory's scheduler (since 1.7)."
    )


class JobQueued(Contract):
    job_id: uuid.UUID
    tenant_id: Slug
    client_request_id: str
    reason: str
    explanation: Explanation


class RejectionCode(StrEnum):
    """Why a job, or one envelope a tenant sent, was refused. The README's integration guide says what
    each means and what to do."""

    UNKNOWN_TENANT = "unknown_tenant"
    INVALID_REQUEST = "invalid_request"
    NO_ALLOWED_SITE = "no_allowed_site"
    NEVER_FITS = "never_fits"
    DEADLINE_PASSED = "deadline_passed"
    DEADLINE_UNREACHABLE = "deadline_unreachable"
    POLICY_ENGINE_ERROR = "policy_engine_error"
    BUDGET_EXCEEDED = "budget_exceeded"
    STALE_REQUEST = "stale_request"
    CONFLICTING_RESUBMISSION = "conflicting_resubmission"
    UNKNOWN_JOB = "unknown_job"
    NOT_CANCELLABLE = "not_cancellable"
    REUSED_ENVELOPE_ID = "reused_envelope_id"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    SOURCE_NOT_SIGNER = "source_not_signer"


class FieldError(Contract):
    """One reason an envelope is not a valid event: where, and what is wrong there."""

    location: str = Field(description="The member's path in the envelope, e.g. 'data.gpu_count'.")
    message: str


class JobRejected(Contract):
    job_id: uuid.UUID
    tenant_id: Slug
    client_request_id: str
    code: RejectionCode
    reason: str
    explanation: Explanation | None = None
    scope: Literal["job", "envelope"] = Field(
        default="job",
        description="job: the job is rejected, for good. envelope: only the envelope named by envelope_id "
        "was refused (an invalid request, a conflicting resubmission, a cancel that could not apply); the "
        "job, if there is one, is as it was, and an invalid request leaves its job id free for a corrected "
        "one.",
    )
    envelope_id: uuid.UUID | None = Field(
        default=None, description="The id of the refused envelope, when the envelope's id was a valid one."
    )
    envelope_type: Literal["jobs.requested", "jobs.cancel"] | None = Field(
        default=None, description="The topic of the refused envelope, for a refusal of scope envelope."
    )
    field_errors: list[FieldError] = Field(
        default_factory=list, description="For invalid_request: each member that is not valid, and why."
    )


class JobCancelRequested(Inbound):
    """A tenant asks to cancel one of its jobs, at whatever stage it is."""

    job_id: UuidText
    tenant_id: Slug
    reason: str = Field(default="", max_length=MAX_REASON_LENGTH)


class JobCancelled(Contract):
    """Placement honoured a cancel. A placed job's capacity is released once its factory confirms it stopped
    (jobs.completed with status cancelled); its usage until then is billed."""

    job_id: uuid.UUID
    tenant_id: Slug
    stage: Literal["before_request", "requested", "queued", "placed"]
    site_id: Slug | None = None
    reason: str = ""


class JobStarted(Inbound):
    job_id: UuidText
    tenant_id: Slug
    site_id: Slug
    pool_id: Slug
    gpu_count: int = Field(ge=1)
    attempt: int = Field(default=1, ge=1, description="The run of the job, as placed.")


class UsageReported(Inbound):
    """One interval of a running job's usage. `seq` runs 1..n per run; jobs.completed states n."""

    job_id: UuidText
    tenant_id: Slug
    site_id: Slug
    pool_id: Slug
    attempt: int = Field(default=1, ge=1, description="The run of the job, as placed.")
    seq: int = Field(ge=1)
    gpu_seconds: int = Field(ge=0)
    energy_wh: int = Field(ge=0)
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    interval_start: AwareDatetime
    interval_end: AwareDatetime

    @model_validator(mode="after")
    def _interval_is_ordered(self) -> UsageReported:
        if self.interval_end < self.interval_start:
            raise ValueError("interval_end is before interval_start")
        return self


class JobCompleted(Inbound):
    job_id: UuidText
    tenant_id: Slug
    site_id: Slug
    pool_id: Slug
    gpu_count: int = Field(ge=1)
    status: Literal["succeeded", "failed", "cancelled"]
    usage_reports: int = Field(ge=0, description="How many usage.reported events this run emitted.")
    attempt: int = Field(default=1, ge=1, description="The run of the job, as placed.")
    gpu_seconds: int = Field(ge=0)
    reason: str | None = Field(
        default=None,
        max_length=MAX_REASON_LENGTH,
        description="Why a run failed, as the factory's scheduler says (since 1.5).",
    )


class JobBilled(Contract):
    job_id: uuid.UUID
    tenant_id: Slug
    site_id: Slug
    accelerator_model: str
    gpu_seconds: int = Field(ge=0)
    price_krw_per_gpu_hour: int = Field(ge=0)
    amount_krw: int = Field(ge=0, description="round_half_up(gpu_seconds * price / 3600), whole won.")
    marketplace_fee_krw: int = Field(ge=0)
    site_payable_krw: int = Field(ge=0)
    usage_reports: int = Field(ge=0)
    attempt: int = Field(default=1, ge=1, description="The run of the job, as placed.")


class UsageRated(Contract):
    """A per-tenant usage record for billing consumers: one per usage.reported, with its amount."""

    usage_event_id: uuid.UUID
    usage_source: str
    job_id: uuid.UUID
    tenant_id: Slug
    site_id: Slug
    accelerator_model: str
    attempt: int = Field(default=1, ge=1, description="The run of the job, as placed.")
    seq: int = Field(ge=1)
    gpu_seconds: int = Field(ge=0)
    energy_wh: int = Field(ge=0)
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    price_krw_per_gpu_hour: int = Field(ge=0)
    amount_krw: int = Field(description="This interval's share; a run's shares sum to its billed amount.")
    charge_model: ChargeModel = "gpu_hour"
    price_krw_per_million_input_tokens: int | None = None
    price_krw_per_million_output_tokens: int | None = None
    usage_period: str = Field(
        default="", pattern=PERIOD_PATTERN, description="Month (KST) the usage is dated in."
    )
    invoice_period: str = Field(
        default="",
        pattern=PERIOD_PATTERN,
        description="Month of the invoice that carries it: later than usage_period for an adjustment.",
    )


class InvoiceLine(Contract):
    """One run's usage on one invoice: by job, site, accelerator and the policy revision it ran under."""

    job_id: uuid.UUID
    attempt: int = Field(ge=1)
    site_id: Slug
    accelerator_model: str
    policy_revision: str
    charge_model: ChargeModel
    usage_period: str = Field(pattern=PERIOD_PATTERN)
    adjustment: bool = Field(description="Usage dated in an earlier, already issued period.")
    gpu_seconds: int = Field(ge=0)
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    amount_krw: int = Field(ge=0)


class InvoiceIssued(Contract):
    """A tenant's monthly invoice, issued and immutable. total = subtotal - volume discount + VAT."""

    invoice_id: uuid.UUID
    tenant_id: Slug
    period: str = Field(pattern=PERIOD_PATTERN)
    lines: list[InvoiceLine]
    subtotal_krw: int = Field(ge=0, description="Sum of the lines: the rated usage charged to this invoice.")
    volume_discount_krw: int = Field(ge=0, description="Graduated volume tiers on GPU-hour charges.")
    net_krw: int = Field(ge=0)
    vat_krw: int = Field(ge=0, description="10 percent of net, rounded half up.")
    total_krw: int = Field(ge=0)


class BudgetThresholdCrossed(Contract):
    """A tenant's charges crossed one of its budget alert thresholds; sent once per threshold and scope."""

    tenant_id: Slug
    budget_kind: Literal["prepaid", "monthly_cap"]
    scope: str = Field(description="'all' for a prepaid budget, else the month (KST) of the cap.")
    threshold_percent: int = Field(ge=1, le=1000)
    budget_krw: int = Field(ge=0)
    charged_krw: int = Field(ge=0, description="Rated charges in scope, before discount and VAT.")


class CsapCertificate(Inbound):
    grade: Literal["low", "medium", "high"]
    service_model: Literal["IaaS", "PaaS", "SaaS"] = "IaaS"
    iaas_grade: Literal["low", "medium", "high"] | None = Field(
        default=None, description="Grade of the IaaS a PaaS/SaaS runs on (CSAP-04)."
    )
    expires: date


class Pool(Inbound):
    pool_id: Slug = Field(pattern=SLUG_PATTERN)
    accelerator_model: str = Field(min_length=1, max_length=MAX_MODEL_LENGTH)
    generation: int = Field(ge=1, description="Ordinal accelerator generation, e.g. Hopper 9, Blackwell 10.")
    accelerator_origin: CountryCode = Field(description="ISO country of the chip's designer.")
    gpu_count: int = Field(ge=0)
    price_krw_per_gpu_hour: int = Field(ge=1)
    price_krw_per_million_input_tokens: int | None = Field(
        default=None, ge=1, description="Token pricing for inference runs, with the output price."
    )
    price_krw_per_million_output_tokens: int | None = Field(default=None, ge=1)
    power_kw_per_gpu: float = Field(gt=0, le=10)
    pue: float = Field(ge=1, le=3)


class SiteAttributes(Inbound):
    site_id: Slug = Field(pattern=SLUG_PATTERN)
    name: Name
    country: CountryCode
    region: Region
    operator: Name
    operator_country: CountryCode
    operator_type: Literal["government", "public", "private"]
    ops_staff_country: CountryCode
    management_country: CountryCode
    internet_facing: bool
    csap: CsapCertificate | None = None
    separation: Literal["physical", "logical"]
    integrated_audit_log: bool
    external_network_blocked: bool
    encryption_at_rest: bool
    holds_reid_key: bool
    closed_environment: bool
    assumptions: list[Annotated[str, StringConstraints(max_length=MAX_ASSUMPTION_LENGTH)]] = Field(
        default_factory=list,
        max_length=MAX_ASSUMPTIONS,
        description="Attributes that no public source gives: the catalogue's own.",
    )


class SiteAttestation(Inbound):
    """An auditor's Ed25519 signature (base64) over the site's attributes, canonically encoded."""

    auditor_key_id: str = Field(min_length=1, max_length=100)
    signature: str = Field(min_length=1, max_length=200)


class CapacityOffered(Inbound):
    site: SiteAttributes
    pools: list[Pool] = Field(min_length=1, max_length=MAX_POOLS_PER_SITE)
    attestation: SiteAttestation | None = Field(
        default=None, description="Absent: attributes not vouched for."
    )

    def unknown_countries(self) -> list[str]:
        """The country codes of this offer that are not on the ISO 3166-1 list, each with its field."""
        site = self.site
        stated = {
            "country": site.country,
            "operator_country": site.operator_country,
            "ops_staff_country": site.ops_staff_country,
            "management_country": site.management_country,
        } | {f"pools.{pool.pool_id}.accelerator_origin": pool.accelerator_origin for pool in self.pools}
        return [f"{field} {code!r}" for field, code in stated.items() if unknown_country(code)]


class CapacityRejected(Contract):
    """An offer placement refused, e.g. because its auditor signature does not verify."""

    site_id: Slug
    reason: str


class CapacityUpdated(Inbound):
    site_id: Slug
    pool_id: Slug
    status: Literal["available", "maintenance", "withdrawn"]
    gpu_count: int | None = Field(
        default=None,
        ge=0,
        description=(
            "The pool's new size, if it changed. Free GPUs are derived by placement (size less its "
            "reservations), the only party that knows placements still in flight."
        ),
    )


class ExemptedFinding(Contract):
    """A rule the site failed, waived by an explicit, approved, time-boxed exemption (EXC-01)."""

    rule: str
    message: str
    approver: str
    expires: date
    reason: str


class SiteVerdict(Contract):
    site_id: Slug
    allowed: bool
    violations: list[RuleViolation] = Field(default_factory=list)
    warnings: list[RuleViolation] = Field(default_factory=list)
    exempted: list[ExemptedFinding] = Field(default_factory=list)


class PolicyDecisionRecord(Contract):
    decision_id: uuid.UUID
    job_id: uuid.UUID
    tenant_id: Slug
    policy_revision: str
    engine: str
    input_sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="sha256 of the canonical JSON of the input as evaluated; with site_sha256, of the input "
        "whose `sites` is site_sha256.",
    )
    duration_us: int = Field(ge=0)
    sites: list[SiteVerdict]
    input: dict[str, Any] | None = Field(
        default=None,
        description="The policy input as evaluated (job, tenant, time, and every site unless site_sha256 "
        "names their snapshots), for audit and replay; without its job when job_sha256 names it.",
    )
    job_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="The digest (sha256 of the canonical JSON) of the job as the policy read it: the request "
        "of job_id on jobs.requested, as its model reads it. When present, `input` has no `job`. Absent "
        "from decisions before 1.4.",
    )
    site_sha256: dict[str, str] | None = Field(
        default=None,
        description="Each judged site's snapshot on market.sites, by site id: the digest (sha256 of the "
        "canonical JSON) of the site's document as the policy read it. When present, `input` holds the job, "
        "the tenant and the time, and its `sites` are these snapshots.",
    )
    worker_id: str | None = Field(
        default=None, max_length=100, description="The placement worker that decided. Absent before 1.4."
    )
    worker_seq: int | None = Field(
        default=None,
        ge=1,
        description="This decision's number among the worker's decisions, from 1 without a gap: "
        "`sovereign decisions verify` reports any number missing from the log. Absent before 1.4.",
    )
    cached_sites: list[str] = Field(
        default_factory=list,
        description="The sites whose verdict the deciding worker had already computed for the same "
        "revision, policy-relevant job attributes, tenant, site document and day, and took from memory "
        "instead of evaluating again.",
    )


class SiteSnapshot(Contract):
    """A site's document as the policy reads it (its attributes, pools and whether a listed auditor vouched
    for it), published once under its digest: decisions refer to it instead of carrying it."""

    site_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of its canonical JSON.")
    site_id: Slug
    document: dict[str, Any]


class PolicyRevisionPublished(Inbound):
    policy_revision: str
    previous_revision: str | None = None
    published_by: str
    tests_passed: int = Field(ge=0)
    files: dict[str, str] = Field(description="Path -> sha256 of every file in the bundle.")
    bundle: dict[str, str] | None = Field(
        default=None,
        description="Path -> content of every file; its content hash must equal policy_revision.",
    )


class PolicyNonCompliance(Contract):
    """A job placed under an earlier revision that the newly published one would not allow where it runs."""

    job_id: uuid.UUID
    tenant_id: Slug
    site_id: Slug
    placed_under_revision: str
    new_revision: str
    violations: list[RuleViolation]
    enforcement: Literal["action_required", "report_only"] = Field(
        description="action_required when a violated rule is in deny mode; report_only for warn or dryrun."
    )


# Envelopes, one per event type. The literal type doubles as the topic name.
class JobRequestedEvent(Event[JobRequest]):
    SCHEMA_VERSION: ClassVar[str] = "1.5"
    JCS_SIGNATURES_SINCE: ClassVar[str | None] = "1.5"
    type: Literal["jobs.requested"] = "jobs.requested"


class JobPlacedEvent(Event[JobPlaced]):
    SCHEMA_VERSION: ClassVar[str] = "1.7"
    # The attestation it carries is signed over the claim's RFC 8785 form.
    JCS_SIGNATURES_SINCE: ClassVar[str | None] = "1.6"
    type: Literal["jobs.placed"] = "jobs.placed"


class JobQueuedEvent(Event[JobQueued]):
    SCHEMA_VERSION: ClassVar[str] = "1.3"
    type: Literal["jobs.queued"] = "jobs.queued"


class JobRejectedEvent(Event[JobRejected]):
    SCHEMA_VERSION: ClassVar[str] = "1.6"
    type: Literal["jobs.rejected"] = "jobs.rejected"


class JobCancelEvent(Event[JobCancelRequested]):
    SCHEMA_VERSION: ClassVar[str] = "1.2"
    JCS_SIGNATURES_SINCE: ClassVar[str | None] = "1.2"
    type: Literal["jobs.cancel"] = "jobs.cancel"


class JobCancelledEvent(Event[JobCancelled]):
    type: Literal["jobs.cancelled"] = "jobs.cancelled"


class JobStartedEvent(Event[JobStarted]):
    SCHEMA_VERSION: ClassVar[str] = "1.3"
    JCS_SIGNATURES_SINCE: ClassVar[str | None] = "1.3"
    type: Literal["jobs.started"] = "jobs.started"


class UsageReportedEvent(Event[UsageReported]):
    SCHEMA_VERSION: ClassVar[str] = "1.3"
    JCS_SIGNATURES_SINCE: ClassVar[str | None] = "1.3"
    type: Literal["usage.reported"] = "usage.reported"


class JobCompletedEvent(Event[JobCompleted]):
    SCHEMA_VERSION: ClassVar[str] = "1.5"
    JCS_SIGNATURES_SINCE: ClassVar[str | None] = "1.4"
    type: Literal["jobs.completed"] = "jobs.completed"


class JobBilledEvent(Event[JobBilled]):
    SCHEMA_VERSION: ClassVar[str] = "1.2"
    type: Literal["jobs.billed"] = "jobs.billed"


class UsageRatedEvent(Event[UsageRated]):
    SCHEMA_VERSION: ClassVar[str] = "1.3"
    type: Literal["billing.usage"] = "billing.usage"


class CapacityOfferedEvent(Event[CapacityOffered]):
    SCHEMA_VERSION: ClassVar[str] = "1.5"
    JCS_SIGNATURES_SINCE: ClassVar[str | None] = "1.5"
    type: Literal["capacity.offered"] = "capacity.offered"


class CapacityRejectedEvent(Event[CapacityRejected]):
    type: Literal["capacity.rejected"] = "capacity.rejected"


class CapacityUpdatedEvent(Event[CapacityUpdated]):
    SCHEMA_VERSION: ClassVar[str] = "1.2"
    JCS_SIGNATURES_SINCE: ClassVar[str | None] = "1.2"
    type: Literal["capacity.updated"] = "capacity.updated"


class SiteSnapshotEvent(Event[SiteSnapshot]):
    SCHEMA_VERSION: ClassVar[str] = "1.0"
    type: Literal["market.sites"] = "market.sites"


class PolicyDecisionEvent(Event[PolicyDecisionRecord]):
    SCHEMA_VERSION: ClassVar[str] = "1.4"
    type: Literal["policy.decisions"] = "policy.decisions"


class PolicyPublishedEvent(Event[PolicyRevisionPublished]):
    SCHEMA_VERSION: ClassVar[str] = "1.3"
    JCS_SIGNATURES_SINCE: ClassVar[str | None] = "1.3"
    type: Literal["policy.published"] = "policy.published"


class PolicyNonComplianceEvent(Event[PolicyNonCompliance]):
    type: Literal["policy.noncompliance"] = "policy.noncompliance"


class InvoiceIssuedEvent(Event[InvoiceIssued]):
    type: Literal["invoices.issued"] = "invoices.issued"


class BudgetThresholdCrossedEvent(Event[BudgetThresholdCrossed]):
    type: Literal["billing.budget"] = "billing.budget"


EVENT_MODELS: dict[str, type[Event]] = {  # type: ignore[type-arg]
    model.model_fields["type"].default: model
    for model in (
        JobRequestedEvent,
        JobPlacedEvent,
        JobQueuedEvent,
        JobRejectedEvent,
        JobCancelEvent,
        JobCancelledEvent,
        JobStartedEvent,
        UsageReportedEvent,
        JobCompletedEvent,
        JobBilledEvent,
        UsageRatedEvent,
        CapacityOfferedEvent,
        CapacityRejectedEvent,
        CapacityUpdatedEvent,
        PolicyDecisionEvent,
        SiteSnapshotEvent,
        PolicyPublishedEvent,
        PolicyNonComplianceEvent,
        InvoiceIssuedEvent,
        BudgetThresholdCrossedEvent,
    )
}

TOPICS: tuple[str, ...] = tuple(EVENT_MODELS)
# The topics parties outside the marketplace's services write (tenants, factories, officers): their
# envelopes are held to MAX_ENVELOPE_BYTES, what the services write only to the broker's limit.
WRITTEN_OUTSIDE: frozenset[str] = frozenset(
    topic
    for topic, model in EVENT_MODELS.items()
    if issubclass(model.model_fields["data"].annotation, Inbound)  # type: ignore[arg-type]
)
# What tenants write: their requests and cancels, each signed by the tenant's key.
WRITTEN_BY_TENANTS: frozenset[str] = frozenset(
    model.model_fields["type"].default for model in (JobRequestedEvent, JobCancelEvent)
)

# The shared topics carry every tenant's events. Each tenant also has a stream of its own, the only outcome
# topic its principal may read, with a copy of every event about its jobs, runs, usage and bills.
TENANT_STREAM_PREFIX = "tenant."
# What the marketplace's services tell a tenant: written for the shared topic and for the tenant's stream in
# the same transaction.
TOLD_TO_TENANT: frozenset[str] = frozenset(
    {
        "jobs.placed",
        "jobs.queued",
        "jobs.rejected",
        "jobs.cancelled",
        "jobs.billed",
        "billing.usage",
        "invoices.issued",
        "billing.budget",
        "policy.noncompliance",
    }
)
# A factory's reports on a tenant's runs: relayed to the tenant's stream by placement once it has verified
# them, so a factory never writes into a tenant's stream itself.
RELAYED_TO_TENANT: frozenset[str] = frozenset({"jobs.started", "jobs.completed"})
TENANT_STREAM_TYPES = TOLD_TO_TENANT | RELAYED_TO_TENANT


def dead_letter_topic(topic: str) -> str:
    return f"{topic}.dlq"


def tenant_source(tenant_id: str) -> str:
    """The `source` of a tenant's envelopes: the principal whose key signs them."""
    return f"tenant/{tenant_id}"


def tenant_stream(tenant_id: str) -> str:
    return f"{TENANT_STREAM_PREFIX}{tenant_id}"


def stream_tenant(topic: str) -> str | None:
    """The tenant whose stream the topic is, or None for a shared topic."""
    return topic.removeprefix(TENANT_STREAM_PREFIX) if topic.startswith(TENANT_STREAM_PREFIX) else None


def model_for(topic: str, event_type: str | None) -> type[Event] | None:  # type: ignore[type-arg]
    """The model of a record: its topic's, or on a tenant's stream that of the type it carries (its
    `event_type` header); None for anything else."""
    if stream_tenant(topic) is None:
        return EVENT_MODELS.get(topic)
    return EVENT_MODELS.get(event_type or "") if event_type in TENANT_STREAM_TYPES else None
