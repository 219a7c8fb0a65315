"""Which rules changed between two policy bundles: logic, catalogue entry (mode, title ...), shared helpers,
data (exemptions, country lists) and tests. Pure: two bundles in, lines of a report out."""

from __future__ import annotations

import re
from collections import defaultdict

from services.shared.domain.policy import PolicyBundle

_RULE_ID = re.compile(r'"rule":\s*"([A-Z0-9]+-[0-9]+)"')
_HEAD = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*)")
_TEST = re.compile(r"^(test_[A-Za-z0-9_]+)", re.MULTILINE)


def _blocks(text: str) -> list[str]:
    """Top-level statements: each starts at column 0 and runs until the next one."""
    blocks: list[list[str]] = []
    for line in text.splitlines():
        starts_statement = line[:1] not in ("", " ", "\t", "}", ")", "]", "#")
        if starts_statement or not blocks:
            blocks.append([])
        blocks[-1].append(line.rstrip())
    return ["\n".join(block).strip() for block in blocks if "\n".join(block).strip()]


def _logic(bundle: PolicyBundle) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(rule id -> its blocks, 'file: helper' -> its blocks), ignoring package and import lines."""
    rules: dict[str, list[str]] = defaultdict(list)
    helpers: dict[str, list[str]] = defaultdict(list)
    for path, text in sorted(bundle.policies.items()):
        for block in _blocks(text):
            if block.startswith(("package ", "import ", "#")):
                continue
            ids = set(_RULE_ID.findall(block))
            for rule_id in ids:
                rules[rule_id].append(block)
            if not ids:
                head = _HEAD.match(block)
                helpers[f"{path}: {head.group(1) if head else block.splitlines()[0]}"].append(block)
    return rules, helpers


def diff_bundles(old: PolicyBundle, new: PolicyBundle) -> list[str]:
    if old.revision == new.revision:
        return []
    lines: list[str] = []
    old_rules, old_helpers = _logic(old)
    new_rules, new_helpers = _logic(new)
    old_entries, new_entries = old.data.get("rules", {}), new.data.get("rules", {})
    for rule_id in sorted(set(old_rules) | set(new_rules) | set(old_entries) | set(new_entries)):
        if rule_id not in old_rules and rule_id not in old_entries:
            lines.append(f"{rule_id}: added")
            continue
        if rule_id not in new_rules and rule_id not in new_entries:
            lines.append(f"{rule_id}: removed")
            continue
        if old_rules.get(rule_id) != new_rules.get(rule_id):
            lines.append(f"{rule_id}: logic changed")
        before, after = old_entries.get(rule_id, {}), new_entries.get(rule_id, {})
        for field in sorted(set(before) | set(after)):
            if before.get(field) != after.get(field):
                lines.append(f"{rule_id}: {field} {before.get(field)!r} -> {after.get(field)!r}")
    for helper in sorted(set(old_helpers) | set(new_helpers)):
        if old_helpers.get(helper) != new_helpers.get(helper):
            state = (
                "added"
                if helper not in old_helpers
                else "removed"
                if helper not in new_helpers
                else "changed"
            )
            lines.append(f"shared logic {state}: {helper}")
    for key in sorted((set(old.data) | set(new.data)) - {"rules"}):
        if old.data.get(key) != new.data.get(key):
            lines.append(f"data changed: {key}")
    old_tests = set(_TEST.findall("\n".join(old.tests.values())))
    new_tests = set(_TEST.findall("\n".join(new.tests.values())))
    if old_tests != new_tests:
        lines.append(f"tests: {len(new_tests - old_tests)} added, {len(old_tests - new_tests)} removed")
    return lines
