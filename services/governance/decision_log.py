"""The decision log's hash chain as pure functions: each entry's hash covers its content and the hash of
the entry before it, so changing, removing or reordering any stored entry breaks every hash after it. And
its completeness: each placement worker numbers its decisions, so a decision that never reached the log
shows as a number missing between two that did."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from services.shared.domain.signing import canonical_json

GENESIS_HASH = "0" * 64


def chain_hash(previous_hash: str, content: dict[str, Any]) -> str:
    return hashlib.sha256(previous_hash.encode() + b"\n" + canonical_json(content)).hexdigest()


@dataclass(frozen=True)
class ChainBreak:
    seq: int
    reason: str


def verify(entries: Iterable[tuple[int, dict[str, Any], str, str]]) -> ChainBreak | None:
    """Check (seq, content, previous hash, entry hash) rows in sequence order; the first break, or None."""
    expected_previous = GENESIS_HASH
    expected_seq = 1
    for seq, content, previous_hash, entry_hash in entries:
        if seq != expected_seq:
            return ChainBreak(seq, f"expected entry {expected_seq} here: an entry is missing or reordered")
        if previous_hash != expected_previous:
            return ChainBreak(seq, "its link to the previous entry does not match that entry's hash")
        if chain_hash(previous_hash, content) != entry_hash:
            return ChainBreak(seq, "its content does not match its hash: the entry was altered")
        expected_previous = entry_hash
        expected_seq += 1
    return None


@dataclass(frozen=True)
class SequenceGap:
    """Numbers of one worker's decisions that the log lacks (or holds twice), below the highest it holds."""

    worker_id: str
    missing: list[int]
    repeated: list[int]
    highest: int

    def describe(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"lacks its decisions {_ranges(self.missing)}")
        if self.repeated:
            parts.append(f"holds its decisions {_ranges(self.repeated)} more than once")
        return f"worker {self.worker_id} {' and '.join(parts)} (of 1-{self.highest})"


def sequence_gaps(contents: Iterable[dict[str, Any]]) -> list[SequenceGap]:
    """Each worker whose numbered decisions in the log are not exactly 1..its highest; decisions from
    before numbering (no worker_seq) are not counted."""
    numbers: dict[str, list[int]] = defaultdict(list)
    for content in contents:
        decision = content.get("decision", {})
        if decision.get("worker_id") is not None and decision.get("worker_seq") is not None:
            numbers[decision["worker_id"]].append(int(decision["worker_seq"]))
    gaps = []
    for worker_id, seqs in sorted(numbers.items()):
        highest, held = max(seqs), set(seqs)
        missing = [seq for seq in range(1, highest + 1) if seq not in held]
        repeated = sorted(seq for seq in held if seqs.count(seq) > 1)
        if missing or repeated:
            gaps.append(SequenceGap(worker_id, missing, repeated, highest))
    return gaps


def _ranges(numbers: list[int]) -> str:
    """1, 2, 3, 7 as '1-3, 7'."""
    spans: list[list[int]] = []
    for number in numbers:
        if spans and number == spans[-1][1] + 1:
            spans[-1][1] = number
        else:
            spans.append([number, number])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)
