"""Kernels started ahead of the stage that will use them.

A stage notebook spends most of a no-change run starting its kernel: a fresh Python, ipykernel,
and the imports of hubops, docker-py and pydantic (about 1.5-2.5 s here, against a few tenths of
a second of work). The chain runner knows which stage comes next, so while one stage runs,
`Prestarted` starts the kernels of the next stages (`AHEAD`), each in a background thread, and
imports hubops in them (silently: nothing reaches the notebook, whose execution counts start at 1
as usual). The stage then
runs in that kernel through papermill's `km=` argument, and its kernel is shut down after it, as
before: every stage still gets a fresh kernel of its own.

If a prestart fails for any reason, the stage starts its kernel the usual way (papermill's), and
the reason is logged at debug level.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path
from typing import Optional

log = logging.getLogger("hubops")

KERNEL = "python3"
# The kernel's own start-up chatter (e.g. "running over TCP") is not the stage's output.
KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR"]
WARM_UP = "import hubops"
START_TIMEOUT = 60
# How many stages ahead kernels are started: a no-change stage takes less than a kernel's start,
# so one ahead is not enough; each waiting kernel holds about 60 MB. HUBOPS_KERNELS_AHEAD=0 turns
# prestarting off (every stage then starts its own kernel, as plain papermill does).
AHEAD = max(0, int(os.environ.get("HUBOPS_KERNELS_AHEAD", "2") or 0))


class Prestarted:
    """One kernel being started in a background thread, ready for `take()`."""

    def __init__(self, cwd: Path):
        from jupyter_client.manager import AsyncKernelManager

        self.km = AsyncKernelManager(kernel_name=KERNEL)
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._start, args=(str(cwd),), name="hubops-kernel-prestart",
                                        daemon=True)
        self._thread.start()

    def _start(self, cwd: str) -> None:
        async def go() -> None:
            await self.km.start_kernel(cwd=cwd, extra_arguments=list(KERNEL_ARGS))
            kc = self.km.client()
            kc.start_channels()
            try:
                await kc.wait_for_ready(timeout=START_TIMEOUT)
                reply = await kc.execute_interactive(WARM_UP, silent=True, store_history=False,
                                                     timeout=START_TIMEOUT)
                if reply["content"].get("status") != "ok":
                    raise RuntimeError(f"{WARM_UP!r} failed in the kernel: {reply['content'].get('evalue')}")
            finally:
                kc.stop_channels()

        try:
            asyncio.run(go())
        except BaseException as e:  # noqa: BLE001 - reported by take(); the stage starts its own kernel
            self.error = e

    def take(self):
        """The started kernel manager, or None (after cleaning up) if it could not start."""
        self._thread.join()
        if self.error is None:
            return self.km
        log.debug("a kernel started ahead failed (%s); the stage starts its own", self.error)
        shutdown(self.km)
        return None

    def discard(self) -> None:
        """Shut the kernel down unused (the run stopped before its stage)."""
        self._thread.join()
        shutdown(self.km)


def shutdown(km) -> None:
    """Stop a kernel and release its ports and connection file; never raises."""
    if km is None:
        return

    async def go() -> None:
        if km.has_kernel:
            await km.shutdown_kernel(now=True)  # also removes its connection file
        else:
            await km.cleanup_resources()

    try:
        asyncio.run(go())
    except Exception as e:  # noqa: BLE001 - a kernel that is already gone is fine
        log.debug("shutting a kernel down: %s", e)
