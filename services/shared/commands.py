"""Child processes the services run and wait for (the policy check, a scheduler's commands)."""

from __future__ import annotations

import asyncio


async def output_within(process: asyncio.subprocess.Process, seconds: float) -> tuple[bytes, bytes] | None:
    """What the process wrote to stdout and stderr once it exits, or None if it has not within `seconds`:
    it is then killed (and reaped), so a hung child never outlives its caller's patience."""
    try:
        return await asyncio.wait_for(process.communicate(), seconds)
    except TimeoutError:
        process.kill()
        await process.wait()
        return None
