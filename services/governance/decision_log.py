"""The decision log's hash chain as pure functions: each entry's hash covers its content and the hash of
the entry before it, so changing, removing or reordering any stored entry breaks every hash after it."""

from __future__ import annotations

import hashlib
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
