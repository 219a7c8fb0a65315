"""Policy bundles (the Rego in policies/ plus its data) and the in-process Rego engine that decides with them.

One evaluation covers every candidate site: the input holds the job, the tenant and a map of sites, and
`data.sovereign.placement.decision` answers with the sites it judged and its findings, each naming its site;
`verdicts_by_site` groups them into a verdict per site.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import jsonschema
import pydantic_core
import regorus
from opa_client.opa import OpaClient

from services.shared.logging import get_logger

DECISION_RULE = "data.sovereign.placement.decision"
# The decision's parts: the sites it judged, the findings kept with their mode, the findings waived.
DECISION_PARTS = ("judged", "kept", "waived")
NON_BLOCKING_MODES = frozenset({"warn", "dryrun"})
_TEST_RULE = re.compile(r"^(test_[A-Za-z0-9_]+)\b", re.MULTILINE)
_PACKAGE = re.compile(r"^package\s+([A-Za-z0-9_.]+)", re.MULTILINE)


class PolicyEngineError(RuntimeError):
    """The engine could not decide; callers fail closed."""


def _engine_message(error: BaseException) -> str:
    # regorus appends a Rust backtrace when RUST_BACKTRACE is set; keep the message before it, on one line.
    text = str(error).split("Stack backtrace:")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines)[:500] or type(error).__name__


@dataclass(frozen=True)
class PolicyBundle:
    """Every .rego and data.json file under a directory, keyed by relative path."""

    files: dict[str, str]
    revision: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha256()
        for path in sorted(self.files):
            digest.update(path.encode() + b"\0" + hashlib.sha256(self.files[path].encode()).digest())
        object.__setattr__(self, "revision", digest.hexdigest())

    @classmethod
    def load(cls, directory: Path) -> PolicyBundle:
        if not directory.is_dir():
            raise PolicyEngineError(f"policy directory {directory} does not exist")
        files = {
            path.relative_to(directory).as_posix(): path.read_text(encoding="utf-8")
            for path in sorted(directory.rglob("*"))
            if path.is_file() and (path.suffix == ".rego" or path.name == "data.json")
        }
        if not any(name.endswith(".rego") for name in files):
            raise PolicyEngineError(f"no .rego files under {directory}")
        return cls(files)

    @property
    def policies(self) -> dict[str, str]:
        return {
            p: text for p, text in self.files.items() if p.endswith(".rego") and not p.endswith("_test.rego")
        }

    @property
    def tests(self) -> dict[str, str]:
        return {p: text for p, text in self.files.items() if p.endswith("_test.rego")}

    def file_digests(self) -> dict[str, str]:
        return {path: hashlib.sha256(text.encode()).hexdigest() for path, text in self.files.items()}

    @property
    def data(self) -> dict[str, Any]:
        """data.json files merged at the path of their directory, as OPA loads a bundle."""
        merged: dict[str, Any] = {}
        for path, text in self.files.items():
            if not path.endswith("data.json"):
                continue
            target = merged
            for part in Path(path).parent.parts:
                target = target.setdefault(part, {})
            target.update(json.loads(text))
        return merged


# Says, when asked during an evaluation, whether its time is up.
OutOfTime = Callable[[], bool]


class PolicyOverBudget(PolicyEngineError):
    """An evaluation stopped because its time was up: nothing it found is used."""


class PolicyEngine(Protocol):
    name: str
    revision: str
    # What it decides under: the revision is this bundle's.
    bundle: PolicyBundle

    def decide(
        self, policy_input: dict[str, Any], out_of_time: OutOfTime | None = None
    ) -> dict[str, dict[str, Any]]:
        """A verdict per judged site: allowed, violations, warnings and exempted findings. With
        `out_of_time`, an evaluation whose time is up stops (PolicyOverBudget) instead of finishing."""
        ...


_INSTRUCTION_LIMIT = "exceeded maximum instruction limit"


def _merged(answers: list[Any]) -> Any:
    """The answers of runs over parts of the sites as one answer; a malformed one is returned as it is,
    for verdicts_by_site to refuse: one bad run fails the whole decision closed."""
    malformed = [answer for answer in answers if not _is_decision(answer)]
    if malformed or len(answers) == 1:
        return (malformed or answers)[0]
    return {part: [item for answer in answers for item in answer[part]] for part in DECISION_PARTS}


def _is_decision(answer: Any) -> bool:
    return isinstance(answer, dict) and all(isinstance(answer.get(part), list) for part in DECISION_PARTS)


def verdicts_by_site(decision: Any) -> dict[str, dict[str, Any]]:
    """Group the policy's flat answer by site. A finding in warn or dryrun mode is reported as a warning;
    one in any other mode denies its site, as deny. A malformed answer is an engine failure, so callers
    fail closed."""
    if not _is_decision(decision):
        raise PolicyEngineError(f"{DECISION_RULE} is undefined or not an object of judged, kept and waived")
    verdicts: dict[str, dict[str, Any]] = {
        site_id: {"allowed": True, "violations": [], "warnings": [], "exempted": []}
        for site_id in decision["judged"]
    }
    try:
        for finding in decision["kept"]:
            verdict = verdicts.get(finding["site"])
            if verdict is None:
                continue  # about a site that is not a candidate
            # Only warn and dryrun let a site through: any other mode an engine answers with is deny.
            mode = finding["mode"] if finding["mode"] in NON_BLOCKING_MODES else "deny"
            kept = {"rule": finding["rule"], "message": finding["message"], "mode": mode}
            if mode == "deny":
                verdict["allowed"] = False
                verdict["violations"].append(kept)
            else:
                verdict["warnings"].append(kept)
        for waived in decision["waived"]:
            verdict = verdicts.get(waived["site"])
            if verdict is not None:
                verdict["exempted"].append({key: value for key, value in waived.items() if key != "site"})
    except (KeyError, TypeError) as error:
        raise PolicyEngineError(f"{DECISION_RULE} holds a malformed finding ({error!r})") from error
    return verdicts


class EmbeddedRegoEngine:
    """regorus (Rust) in-process, compiled once per revision. The decision rule runs as a program on
    regorus's virtual machine, about twice as fast as its interpreter, which answers instead when the
    compiler refuses the bundle or the program fails; the two agree (tests/test_opa_parity.py). The
    machine stops a program after 25,000 instructions (not configurable from Python), so a decision over
    many sites is evaluated SITES_PER_RUN sites at a time, and a run the machine stops is split in two:
    the policy judges each site on its own, and the answers of the runs are one answer. `compiled` says
    whether there is a program and `interpreted_after_failure` counts the runs the interpreter took over."""

    # Measured on the parity cases (tests/test_opa_parity.py): 14 to 67 catalogue sites fit one run, the
    # fewest for a job that many rules find against everywhere. A run past the limit is split, at the
    # cost of the run the machine stopped.
    SITES_PER_RUN = 16

    name = "regorus"

    def __init__(self, bundle: PolicyBundle, compile_program: bool = True):
        self.bundle = bundle
        self.revision = bundle.revision
        self._engine = _compile(bundle, include_tests=False)
        self._vm, refusal = _compile_program(bundle) if compile_program else (None, None)
        self.compiled = self._vm is not None
        self.interpreted_after_failure = 0
        self._log = get_logger(component="policy", revision=bundle.revision)
        if refusal is not None:
            self._log.warning("policy_interpreted_not_compiled", reason=refusal)

    def decide(
        self, policy_input: dict[str, Any], out_of_time: OutOfTime | None = None
    ) -> dict[str, dict[str, Any]]:
        return verdicts_by_site(self.evaluate(policy_input, out_of_time))

    def evaluate(self, policy_input: dict[str, Any], out_of_time: OutOfTime | None = None) -> Any:
        """The decision rule's value, as OPA's data API would answer it. The time is checked before each
        run after the first: an evaluation is stopped within one run (tens of milliseconds) of its time."""
        sites = policy_input.get("sites")
        if not isinstance(sites, dict):
            return self._evaluate_run(policy_input, None)
        items = list(sites.items())
        runs = [
            items[start : start + self.SITES_PER_RUN] for start in range(0, len(items), self.SITES_PER_RUN)
        ]
        answers = []
        for index, run in enumerate(runs or [[]]):
            if index and out_of_time is not None and out_of_time():
                raise PolicyOverBudget(f"stopped after {index} of {len(runs)} runs of sites: its time was up")
            answers.append(self._evaluate_run(policy_input, run))
        return _merged(answers)

    def _evaluate_run(self, policy_input: dict[str, Any], sites: list[tuple[str, Any]] | None) -> Any:
        """One run over some sites (all of the input's, with None). A run the machine stops at its
        instruction limit is split in two; a single site past it, or any other failure of the program, is
        the interpreter's."""
        whole = policy_input if sites is None else {**policy_input, "sites": dict(sites)}
        document = pydantic_core.to_json(whole).decode()  # the input is kilobytes: Rust's encoder
        if self._vm is not None:
            try:
                self._vm.set_input_json(document)
                return json.loads(self._vm.execute())
            except Exception as error:
                if sites is not None and len(sites) > 1 and _INSTRUCTION_LIMIT in str(error):
                    half = len(sites) // 2
                    return _merged(
                        [
                            self._evaluate_run(policy_input, sites[:half]),
                            self._evaluate_run(policy_input, sites[half:]),
                        ]
                    )
                self.interpreted_after_failure += 1
                # Once per engine: past the instruction cap every decision would say the same.
                if self.interpreted_after_failure == 1:
                    self._log.warning(
                        "policy_program_failed_interpreting", error=_engine_message(error)[:300]
                    )
        try:
            self._engine.set_input_json(document)
            return json.loads(self._engine.eval_rule_as_json(DECISION_RULE))
        except Exception as error:
            raise PolicyEngineError(f"policy evaluation failed: {_engine_message(error)}") from error


class OpaServerEngine:
    """An OPA server, through opa-python-client, deciding under this bundle's revision only once it has
    shown that it runs exactly this bundle: its modules are the bundle's .rego files and its data the
    bundle's documents. The check is repeated every REVISION_CHECK_SECONDS and after any failure; a server
    that runs anything else (another revision, a restart that reloaded older files) is given this bundle
    again, and until it matches every decision fails closed. `publish` makes the server run a new revision
    through OPA's policy and data APIs."""

    name = "opa"
    REVISION_CHECK_SECONDS = 5.0

    def __init__(self, url: str, bundle: PolicyBundle, timeout_seconds: float = 1.0):
        parsed = urlparse(url)
        if parsed.scheme not in {"http", "https"} or not parsed.hostname:
            raise PolicyEngineError(f"OPA_URL {url!r} is not an http(s) URL")
        self.url = url
        self.bundle = bundle
        self.revision = bundle.revision
        self._timeout = timeout_seconds
        # No retries: a slow or failing server must fail the decision closed, not stall placement.
        self._client = OpaClient(
            host=parsed.hostname,
            port=parsed.port or 8181,
            ssl=parsed.scheme == "https",
            timeout=timeout_seconds,
            retries=0,
        )
        self._checked_at: float | None = None
        self._log = get_logger(component="policy", engine="opa", revision=bundle.revision)

    def decide(
        self, policy_input: dict[str, Any], out_of_time: OutOfTime | None = None
    ) -> dict[str, dict[str, Any]]:
        """One query; its time is bounded by the client's timeout (the decision budget), not `out_of_time`."""
        try:
            self._ensure_serving()
            response = self._client.query_rule(
                input_data=policy_input, package_path="sovereign/placement", rule_name="decision"
            )
        except PolicyEngineError:
            self._checked_at = None
            raise
        except Exception as error:
            self._checked_at = None
            raise PolicyEngineError(f"the OPA server did not decide: {error}") from error
        return verdicts_by_site(response.get("result") if isinstance(response, dict) else None)

    def _ensure_serving(self) -> None:
        now = time.monotonic()
        if self._checked_at is not None and now - self._checked_at < self.REVISION_CHECK_SECONDS:
            return
        difference = self.difference()
        if difference is not None:
            self._log.warning("opa_server_runs_other_policies", difference=difference)
            self._install()
            difference = self.difference()
            if difference is not None:
                raise PolicyEngineError(f"the OPA server does not run revision {self.revision}: {difference}")
        self._checked_at = now

    def difference(self) -> str | None:
        """How what the server runs differs from this bundle, or None when it runs exactly the bundle."""
        served = sorted(module.get("raw", "") for module in self._modules())
        wanted = sorted(text for path, text in self.bundle.files.items() if path.endswith(".rego"))
        if served != wanted:
            extra, missing = len(set(served) - set(wanted)), len(set(wanted) - set(served))
            return f"{extra} module(s) not in the revision, {missing} of its module(s) missing"
        for key, document in self.bundle.data.items():
            if self._client.get_data(key).get("result") != document:
                return f"data.{key} differs from the revision's"
        return None

    def _modules(self) -> list[dict[str, Any]]:
        response = self._client._session.get(f"{self._client.root_url}/policies", timeout=self._timeout)
        response.raise_for_status()
        modules: list[dict[str, Any]] = response.json().get("result", [])
        return modules

    def _install(self) -> None:
        """The bundle's modules and data documents on the server. OPA compiles all its modules at every
        change, so each module replaces the one at its path in place (the id it was loaded under, or its
        path), unchanged ones are left alone, and modules the revision does not have go last."""
        wanted = {path: text for path, text in self.bundle.files.items() if path.endswith(".rego")}
        served = {module["id"]: module.get("raw", "") for module in self._modules()}
        ids = {
            path: next((i for i in served if i == path or i.endswith(f"/{path}")), path) for path in wanted
        }
        for path, text in sorted(wanted.items()):
            if served.get(ids[path]) != text:
                self._client.update_policy_from_string(text, ids[path])
        for module_id in set(served) - set(ids.values()):
            self._client.delete_policy(module_id)
        for key, document in self.bundle.data.items():
            # Through the session: the client's own call takes objects only, and a document may be a list.
            response = self._client._session.put(
                f"{self._client.root_url}/data/{key}", json=document, timeout=self._timeout
            )
            response.raise_for_status()
        self._log.info("opa_server_given_revision", modules=len(wanted))

    def publish(self, bundle: PolicyBundle) -> OpaServerEngine:
        """An engine for a new revision, once the server runs it (checked, as before any decision)."""
        engine = OpaServerEngine(self.url, bundle, self._timeout)
        try:
            engine._install()
            engine._ensure_serving()
        except PolicyEngineError:
            raise
        except Exception as error:
            raise PolicyEngineError(
                f"the OPA server did not take revision {bundle.revision}: {error}"
            ) from error
        return engine


def _compile_program(bundle: PolicyBundle) -> tuple[Any | None, str | None]:
    """The decision rule as a program for regorus's virtual machine, or None and the compiler's reason
    (it takes a subset of Rego: no reading of `data` as a whole, for one)."""
    try:
        program = regorus.Program.compile_from_modules(
            json.dumps(bundle.data), list(bundle.policies.items()), [DECISION_RULE]
        )
    except Exception as error:
        return None, _engine_message(error)
    machine = regorus.Rvm()
    machine.load_program(program)
    machine.set_data_json(json.dumps(bundle.data))  # the program reads data at run time, not from compiling
    return machine, None


def _compile(bundle: PolicyBundle, include_tests: bool) -> Any:
    engine = regorus.Engine()
    sources = bundle.files if include_tests else bundle.policies
    try:
        for path, text in sources.items():
            if path.endswith(".rego"):
                engine.add_policy(path, text)
        engine.add_data(bundle.data)
    except Exception as error:
        raise PolicyEngineError(f"policy bundle does not compile: {_engine_message(error)}") from error
    return engine


DATA_SCHEMA = json.loads((Path(__file__).parent / "policy_data.schema.json").read_text(encoding="utf-8"))


def data_problems(bundle: PolicyBundle) -> list[str]:
    """What makes the bundle's data unusable: its JSON Schema's complaints, then what a schema cannot say
    (an exemption for a rule the catalogue lacks, a listed country that is not on the ISO list)."""
    data = bundle.data
    validator = jsonschema.Draft202012Validator(DATA_SCHEMA, format_checker=jsonschema.FormatChecker())
    problems = [
        f"data.json {'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in sorted(
            validator.iter_errors(data), key=lambda error: list(map(str, error.absolute_path))
        )
    ]
    if problems:
        return problems
    rules, lists = data["rules"], data["country_lists"]
    for index, exemption in enumerate(data["exemptions"]):
        if exemption["rule"] not in rules:
            problems.append(f"data.json exemptions/{index}: rule {exemption['rule']} is not in the catalogue")
    known = set(lists["iso_3166_1_alpha_2"])
    for name, codes in lists.items():
        if isinstance(codes, list) and (unknown := sorted(set(codes) - known)):
            problems.append(
                f"data.json country_lists/{name}: not ISO 3166-1 alpha-2 codes: {', '.join(unknown)}"
            )
    return problems


@dataclass(frozen=True)
class RegoTestResult:
    name: str
    passed: bool
    error: str | None
    duration_ms: float


@dataclass(frozen=True)
class RegoTestRun:
    results: list[RegoTestResult]
    # Catalogue rules that produced a finding in at least one test, and those that never did.
    exercised: set[str]
    not_exercised: set[str]
    data_problems: list[str] = field(default_factory=list)
    # What each rule reads ("site.country"), and of those the ones whose absence has a meaning (no
    # certificate, no approval on file): the rest are checked to deny when absent, as results.
    reads: dict[str, list[str]] = field(default_factory=dict)
    optional: set[str] = field(default_factory=set)
    absence: list[AbsenceCase] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            all(r.passed for r in self.results)
            and not self.not_exercised
            and bool(self.results)
            and not self.data_problems
        )


_RULE_ID = re.compile(r'"rule":\s*"([A-Z0-9]+-[0-9]+)"')


def run_rego_tests(bundle: PolicyBundle) -> RegoTestRun:
    """Evaluate every `test_*` rule of every *_test.rego package, as `opa test` would, with coverage on."""
    engine = _compile(bundle, include_tests=True)
    engine.set_enable_coverage(True)
    results: list[RegoTestResult] = []
    for text in bundle.tests.values():
        package = _PACKAGE.search(text)
        if package is None:
            continue
        for rule in dict.fromkeys(_TEST_RULE.findall(text)):
            name = f"data.{package.group(1)}.{rule}"
            started = time.perf_counter()
            try:
                passed = engine.eval_rule(name) is True
                error = None if passed else "rule is false or undefined"
            except Exception as failure:
                passed, error = False, _engine_message(failure)
            results.append(RegoTestResult(name, passed, error, (time.perf_counter() - started) * 1000))
    covered = {
        entry["path"]: set(entry["covered"])
        for entry in json.loads(engine.get_coverage_report_as_json())["files"]
    }
    rule_lines = finding_lines(bundle)
    exercised = {
        rule for rule, lines in rule_lines.items() if any(line in covered.get(p, set()) for p, line in lines)
    }
    reads, optional, absence = _absence_cases(engine)
    return RegoTestRun(
        results + [_absence_result(engine, case) for case in absence],
        exercised,
        set(rule_lines) - exercised,
        data_problems(bundle),
        reads,
        optional,
        absence,
    )


COMPLETENESS = "data.sovereign.completeness"
COMPLETE_REQUEST = "data.sovereign.test_fixtures.complete_request"


@dataclass(frozen=True)
class AbsenceCase:
    """The fixtures' complete request without one attribute a rule needs: whatever the engine, its
    decision must hold a finding of the rule (in the rule's mode) against every site."""

    rule: str
    attribute: str
    request: dict[str, Any]

    @property
    def name(self) -> str:
        return f"absence: {self.rule} without {self.attribute} finds against every site"

    def sites_without_finding(self, verdicts: dict[str, dict[str, Any]]) -> list[str]:
        found = {
            site_id
            for site_id, verdict in verdicts.items()
            if any(f["rule"] == self.rule for f in verdict["violations"] + verdict["warnings"])
        }
        return sorted(set(self.request["sites"]) - found)


def _needs(engine: Any) -> dict[str, dict[str, list[str]]] | None:
    """completeness.needs: what each rule reads, by part of the input; None in a bundle without it."""
    try:
        needs: dict[str, dict[str, list[str]]] = json.loads(engine.eval_rule_as_json(f"{COMPLETENESS}.needs"))
    except Exception:
        return None
    return needs


def declared_reads(bundle: PolicyBundle) -> dict[str, set[str]] | None:
    """Every attribute some rule of the bundle reads, by part of the input (job, tenant, site, request);
    None when the bundle does not declare them."""
    needs = _needs(_compile(bundle, include_tests=False))
    if needs is None:
        return None
    reads: dict[str, set[str]] = {}
    for parts in needs.values():
        for part, names in parts.items():
            reads.setdefault(part, set()).update(names)
    return reads


def _absence_cases(engine: Any) -> tuple[dict[str, list[str]], set[str], list[AbsenceCase]]:
    """What each rule reads (completeness.needs), which of that may be absent, and a case for each of the
    rest. Nothing in a bundle without them."""
    needs = _needs(engine)
    try:
        optional = set(json.loads(engine.eval_rule_as_json(f"{COMPLETENESS}.optional")))
        complete = json.loads(engine.eval_rule_as_json(COMPLETE_REQUEST))
    except Exception:
        return {}, set(), []
    if needs is None:
        return {}, set(), []
    reads = {
        rule: sorted(f"{part}.{name}" for part, names in parts.items() for name in names)
        for rule, parts in needs.items()
    }
    cases = [
        AbsenceCase(rule, attribute, _without_attribute(complete, *attribute.split(".", 1)))
        for rule, attributes in sorted(reads.items())
        for attribute in attributes
        if attribute not in optional
    ]
    return reads, optional, cases


def _absence_result(engine: Any, case: AbsenceCase) -> RegoTestResult:
    started = time.perf_counter()
    engine.set_input_json(json.dumps(case.request))
    missing = case.sites_without_finding(
        verdicts_by_site(json.loads(engine.eval_rule_as_json(DECISION_RULE)))
    )
    detail = f"no {case.rule} finding at {', '.join(missing)}" if missing else None
    return RegoTestResult(case.name, not missing, detail, (time.perf_counter() - started) * 1000)


def _without_attribute(request: dict[str, Any], part: str, name: str) -> dict[str, Any]:
    if part == "request":
        return {key: value for key, value in request.items() if key != name}
    if part == "site":
        sites = {
            site_id: {k: v for k, v in site.items() if k != name}
            for site_id, site in request["sites"].items()
        }
        return {**request, "sites": sites}
    return {**request, part: {k: v for k, v in request[part].items() if k != name}}


def finding_lines(bundle: PolicyBundle) -> dict[str, list[tuple[str, int]]]:
    """Where each rule id builds its finding: the `finding := {` line above each `"rule": "ID"`.

    That line runs only when every condition before it held, so covering it means the rule fired.
    """
    found: dict[str, list[tuple[str, int]]] = {}
    for path, text in bundle.policies.items():
        lines = text.splitlines()
        for index, line in enumerate(lines):
            match = _RULE_ID.search(line)
            if not match:
                continue
            start = next((i for i in range(index, -1, -1) if "finding := {" in lines[i]), index)
            found.setdefault(match.group(1), []).append((path, start + 1))
    return found
