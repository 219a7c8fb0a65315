"""A realistic, seeded mix of job requests from the default tenants, including some that must be refused."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from contracts.events import JobKind, JobRequest, JobRequestedEvent
from services.shared.domain.signing import Signer


@dataclass(frozen=True)
class Template:
    tenant_id: str
    name: str
    kind: JobKind
    gpus: tuple[int, int]
    hours: tuple[float, float]
    extra: dict[str, Any]
    weight: int = 3


TEMPLATES = [
    Template(
        "mois",
        "Civil-complaint summariser fine-tune",
        JobKind.FINE_TUNING,
        (32, 128),
        (4, 12),
        {
            "accelerator_model": "B200",
            "csap_grade": "medium",
            "max_attempts": 2,
            "datasets": [{"name": "complaints-2025", "n2sf_grade": "S", "personal_info": True}],
        },
    ),
    Template(
        "mois",
        "Disaster-response document triage",
        JobKind.INFERENCE,
        (8, 32),
        (2, 6),
        {
            "csap_grade": "high",
            "priority": "urgent",
            "datasets": [{"name": "incident-reports", "n2sf_grade": "S"}],
        },
    ),
    Template(
        "nia",
        "Public-data Korean LLM pretraining",
        JobKind.TRAINING,
        (512, 1536),
        (24, 72),
        {
            "min_generation": 10,
            "csap_grade": "low",
            "max_attempts": 3,
            "datasets": [{"name": "public-data-portal", "n2sf_grade": "O"}],
        },
    ),
    Template(
        "hanil-bank",
        "Credit-scoring model fine-tune",
        JobKind.FINE_TUNING,
        (16, 64),
        (3, 10),
        {
            "accelerator_model": "H200",
            "datasets": [{"name": "loan-book", "categories": ["credit"], "personal_info": True}],
        },
    ),
    Template(
        "seoul-univ-hospital",
        "Radiology report generation",
        JobKind.FINE_TUNING,
        (8, 32),
        (6, 18),
        {
            "min_generation": 9,
            "max_attempts": 2,
            "datasets": [{"name": "pacs-reports", "categories": ["emr"], "personal_info": True}],
        },
    ),
    Template(
        "hanbit-ai",
        "Korean chat model serving",
        JobKind.INFERENCE,
        (8, 64),
        (1, 8),
        {"max_price_krw_per_gpu_hour": 4500, "preferred_regions": ["seoul", "gyeonggi"]},
    ),
    Template(
        "hanbit-ai",
        "Frontier pretraining run on GB200",
        JobKind.TRAINING,
        (2500, 3000),
        (36, 48),
        {"accelerator_model": "GB200"},
        weight=2,
    ),
    Template(
        "globex-sg",
        "Regional recommender training",
        JobKind.TRAINING,
        (64, 256),
        (8, 24),
        {"accelerator_model": "H100", "excluded_regions": ["virginia"]},
    ),
    Template(
        "hanil-bank",
        "Customer-service assistant with web search",
        JobKind.INFERENCE,
        (8, 32),
        (2, 8),
        {
            "generative_ai": True,
            "internet_egress": True,
            "importance": "important",
            "datasets": [{"name": "faq", "categories": ["general"]}],
        },
    ),
    Template(
        "seoul-univ-hospital",
        "Genomic variant calling",
        JobKind.BATCH,
        (16, 64),
        (4, 12),
        {
            "datasets": [
                {
                    "name": "wgs-cohort",
                    "categories": ["genomic"],
                    "personal_info": True,
                    "pseudonymised": True,
                }
            ],
            "purpose": "research",
        },
    ),
    Template(
        "hanbit-ai",
        "Navigation model on national map data",
        JobKind.TRAINING,
        (32, 128),
        (6, 18),
        {"datasets": [{"name": "ngii-maps", "categories": ["map"]}]},
    ),
    Template(
        "globex-sg",
        "Korean customer analytics",
        JobKind.BATCH,
        (8, 32),
        (2, 6),
        {"datasets": [{"name": "kr-customers", "personal_info": True}]},
    ),
    # Requests the marketplace must refuse, each for a different reason.
    Template(
        "pacific-robotics",
        "Robot-control model training (parent in a D:5 country)",
        JobKind.TRAINING,
        (64, 128),
        (8, 16),
        {},
        weight=1,
    ),
    Template(
        "mois",
        "Nation-wide census model (too large for any allowed site)",
        JobKind.TRAINING,
        (20_000, 30_000),
        (10, 20),
        {"csap_grade": "medium"},
        weight=1,
    ),
    Template(
        "mois",
        "Classified analytics on GB200 (no high-grade GB200 site)",
        JobKind.BATCH,
        (8, 16),
        (2, 4),
        {"csap_grade": "high", "accelerator_model": "GB200"},
        weight=1,
    ),
    Template(
        "unregistered-co",
        "Job from a tenant not in the registry",
        JobKind.INFERENCE,
        (1, 4),
        (1, 2),
        {},
        weight=1,
    ),
]


def generate(count: int, seed: int, now: datetime | None = None) -> list[JobRequest]:
    rng = random.Random(seed)
    start = now or datetime.now(UTC)
    weights = [t.weight for t in TEMPLATES]
    requests = []
    for index in range(count):
        # Every template at least once when count allows, then a weighted mix.
        template = TEMPLATES[index] if index < len(TEMPLATES) else rng.choices(TEMPLATES, weights)[0]
        requests.append(
            JobRequest.model_validate(
                {
                    "tenant_id": template.tenant_id,
                    "client_request_id": f"{template.tenant_id}-{seed}-{index:04d}",
                    "name": template.name,
                    "kind": template.kind,
                    "gpu_count": rng.randint(*template.gpus),
                    "expected_hours": round(rng.uniform(*template.hours), 1),
                    "deadline": (start + timedelta(days=rng.randint(20, 90))).isoformat(),
                    **template.extra,
                }
            )
        )
    return requests


def request_events(
    requests: list[JobRequest], signers: Mapping[str, Signer]
) -> list[tuple[JobRequestedEvent, str]]:
    """Each request as its tenant sends it, signed by the tenant's key (unsigned if `signers` has none)."""
    events = []
    for request in requests:
        event = JobRequestedEvent.create(
            source=f"tenant/{request.tenant_id}", subject=request.tenant_id, data=request
        )
        signer = signers.get(request.tenant_id)
        events.append((signer.sign(event) if signer else event, str(request.job_id)))
    return events
