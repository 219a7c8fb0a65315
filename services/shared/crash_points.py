"""Crash points for the fault suite: SIGKILL this process the nth time it reaches a named point.

They sit where a crash is hardest to survive, so a test can land one there instead of hoping a random
`kill -9` does. Unarmed (every production run), reaching a point is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping

from services.shared.logging import get_logger

# A handler's transaction (effect, outbox rows, inbox row) committed; its offset is not committed yet and
# the relay has not published its outbox rows.
HANDLER_COMMITTED = "handler_committed"
# The outbox relay published a batch and has not yet deleted it: the batch is published again on restart.
OUTBOX_PUBLISHED = "outbox_published"
POINTS = frozenset({HANDLER_COMMITTED, OUTBOX_PUBLISHED})


class CrashPoints:
    def __init__(self, armed: Mapping[str, int] | None = None):
        unknown = set(armed or {}) - POINTS
        if unknown:
            raise ValueError(f"unknown crash points: {', '.join(sorted(unknown))}; known: {sorted(POINTS)}")
        self._left = dict(armed or {})

    def reached(self, point: str) -> None:
        if point not in self._left:
            return
        self._left[point] -= 1
        if self._left[point] > 0:
            return
        get_logger(component="crash_points").warning("crash_point_reached", point=point)
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
