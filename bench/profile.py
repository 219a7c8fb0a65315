"""Where a job's CPU goes: py-spy samples each service during the bench's burst, and each sample is charged
to a step (the handler or loop of the service it ran in) and to what it was doing there (the policy
engine, SQL, pydantic, JSON, signatures, Kafka, the event loop), in milliseconds of CPU per job.

    .venv/bin/python -m bench.run --profile DIR     # DIR/<service>.txt: py-spy's raw samples
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

RATE = 100  # samples per second
# A frame: "function (path:line)".
FRAME = re.compile(r"^(?P<function>.*) \((?P<path>.*?):\d+\)$")
# The outermost function of these files that a sample's stack passes through names its step.
HANDLER_FILES = tuple(
    f"services/{name}/handlers.py" for name in ("placement", "billing", "governance", "factory_agent")
)
# What the innermost frame was doing, by where its code lives (the first match wins).
ACTIVITIES = (
    ("policy engine", ("services/shared/domain/policy.py", "verdict_cache.py", "regorus")),
    ("SQL", ("sqlalchemy", "sqlmodel", "sqlite3", "psycopg")),
    ("pydantic", ("pydantic",)),
    ("JSON", ("json/",)),
    ("signatures", ("cryptography", "services/shared/domain/signing.py", "hashlib")),
    ("Kafka client", ("aiokafka", "kafka/")),
    ("FastStream", ("faststream", "fast_depends")),
    ("logging", ("structlog", "logging/")),
    ("event loop", ("asyncio", "selectors")),
)


def record(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling a process until `stop`; its raw (collapsed) stacks go to `out`."""
    command = [
        str(Path(sys.executable).parent / "py-spy"),
        "record",
        "--pid",
        str(pid),
        "--rate",
        str(RATE),
        "--nonblocking",
        "--format",
        "raw",
        "--output",
        str(out),
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(recorders: Iterable[subprocess.Popen[bytes]]) -> None:
    for recorder in recorders:
        recorder.send_signal(signal.SIGINT)  # py-spy writes what it sampled and exits
    for recorder in recorders:
        recorder.wait(timeout=60)


def _frames(stack: str) -> list[tuple[str, str]]:
    frames = []
    for frame in stack.split(";"):
        match = FRAME.match(frame)
        if match:
            path = match["path"].split("site-packages/")[-1]
            frames.append((match["function"], path))
    return frames


def _step(frames: list[tuple[str, str]]) -> str:
    """The outermost handler the sample ran in, or the part of the service's plumbing it was in."""
    for function, path in frames:
        if path.endswith(HANDLER_FILES):
            return function
    if any(path.endswith("services/shared/outbox.py") for _, path in frames):
        return "outbox relay"
    if any("decode" in function and path.endswith("services/shared/runtime.py") for function, path in frames):
        return "parsing consumed batches"
    if any(path.endswith("services/shared/batch.py") for _, path in frames):
        return "batch transaction (commit, savepoints)"
    return "event loop and Kafka client"


def _activity(frames: list[tuple[str, str]]) -> str:
    for _, path in reversed(frames):
        for name, places in ACTIVITIES:
            if any(place in path for place in places):
                return name
        if "services/" in path or "contracts/" in path:
            return "own code"
    return "other"


def breakdown(samples: Path, cpu_ms_per_job: float, top: int = 12) -> list[str]:
    """The service's CPU per job split by step and activity, the largest first."""
    by_step: Counter[str] = Counter()
    by_both: Counter[tuple[str, str]] = Counter()
    for line in samples.read_text().splitlines():
        stack, _, taken = line.rpartition(" ")
        if not taken.isdigit():
            continue  # a sample py-spy cut short when it was stopped
        frames = _frames(stack)
        if frames and frames[-1][1].endswith("selectors.py"):
            continue  # waiting in epoll is not CPU
        step = _step(frames)
        by_step[step] += int(taken)
        by_both[step, _activity(frames)] += int(taken)
    total = sum(by_step.values()) or 1
    lines = []
    for step, count in by_step.most_common(top):
        parts = [(a, c) for (s, a), c in by_both.most_common() if s == step][:4]
        detail = ", ".join(f"{a} {c / total * cpu_ms_per_job:.1f}" for a, c in parts)
        lines.append(f"    {step:<34} {count / total * cpu_ms_per_job:6.2f} ms/job  ({detail})")
    return lines
