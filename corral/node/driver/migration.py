"""A VM's memory and device state moved to another QEMU (``migrate`` / ``migrate-incoming``)
over a TCP connection the agents open and hand to QEMU (``fd:NAME``), since QEMU in its jail has
no address on the node's network.

Convergence: the bandwidth cap is lifted, auto-converge throttles a guest that dirties memory
faster than the link copies it, and the downtime QEMU may take at switch-over starts low
(``DOWNTIME_START_MS``) and is doubled, up to a ceiling, after each pass over memory that did not
shrink what is left (``Ramp``). A migration that has not finished within its time limit is
cancelled and the VM runs on where it was."""

from __future__ import annotations

import contextlib
from typing import Any

from corral.node.driver.qmp import Qmp, QmpUnavailable
from corral.node.spec import MemoryProgress as Progress

DOWNTIME_START_MS = 50
DOWNTIME_MAX_MS = 1000
BANDWIDTH = 1 << 40  # bytes/s: no cap worth the name
FD_OUT = "migration-out"
FD_IN = "migration-in"
ACTIVE = {"setup", "active", "device", "pre-switchover", "wait-unplug", "cancelling"}


async def setup_source(qmp: Qmp, downtime_ms: int = DOWNTIME_START_MS) -> None:
    await qmp.execute(
        "migrate-set-capabilities",
        {
            "capabilities": [
                {"capability": "events", "state": True},
                {"capability": "auto-converge", "state": True},
            ]
        },
    )
    await set_downtime(qmp, downtime_ms)
    await qmp.execute("migrate-set-parameters", {"max-bandwidth": BANDWIDTH})


async def set_downtime(qmp: Qmp, downtime_ms: int) -> None:
    await qmp.execute("migrate-set-parameters", {"downtime-limit": int(downtime_ms)})


async def setup_destination(qmp: Qmp) -> None:
    """Events on; block devices activated only at ``cont`` (not when the memory is in), so the
    NBD export that takes the mirror's last writes never meets an active guest disk."""
    await qmp.execute(
        "migrate-set-capabilities",
        {
            "capabilities": [
                {"capability": "events", "state": True},
                {"capability": "late-block-activate", "state": True},
            ]
        },
    )


async def incoming(qmp: Qmp) -> None:
    """Take the migration stream from the descriptor handed over as ``FD_IN``."""
    await qmp.execute("migrate-incoming", {"uri": f"fd:{FD_IN}"})


async def start(qmp: Qmp) -> None:
    """Send the VM down the connection handed over as ``FD_OUT``."""
    await qmp.execute("migrate", {"uri": f"fd:{FD_OUT}"})


async def cancel(qmp: Qmp) -> None:
    with contextlib.suppress(QmpUnavailable):
        await qmp.execute("migrate_cancel")


async def progress(qmp: Qmp) -> Progress:
    return parse(await qmp.execute("query-migrate"))


def parse(info: dict[str, Any]) -> Progress:
    ram = info.get("ram") or {}
    total = int(ram.get("total", 0))
    remaining = int(ram.get("remaining", 0))
    status = str(info.get("status", "none"))
    if status == "completed":
        percent = 100.0
    elif total:
        # the first pass copies memory once; later passes re-send what the guest dirtied
        percent = round(100.0 * (total - remaining) / total, 1)
    else:
        percent = 0.0
    page = int(ram.get("page-size", 4096) or 4096)
    return Progress(
        status=status,
        percent=percent,
        transferred=int(ram.get("transferred", 0)),
        remaining=remaining,
        total=total,
        dirty_rate=int(ram.get("dirty-pages-rate", 0)) * page,
        mbps=float(ram.get("mbps", 0.0)),
        iterations=int(ram.get("dirty-sync-count", 0)),
        expected_downtime_ms=int(info.get("expected-downtime", 0)),
        downtime_ms=int(info.get("downtime", 0)),
        total_time_ms=int(info.get("total-time", 0)),
        throttle_percent=int(info.get("cpu-throttle-percentage", 0)),
        error=str(info.get("error-desc", "")),
    )


class Ramp:
    """The downtime limit: doubled (up to ``ceiling``) after each pass over memory that left
    at least ``stall`` of what the pass before it left."""

    def __init__(
        self,
        start: int = DOWNTIME_START_MS,
        ceiling: int = DOWNTIME_MAX_MS,
        stall: float = 0.9,
    ) -> None:
        self.limit = max(1, start)
        self.ceiling = max(self.limit, ceiling)
        self.stall = stall
        self._iteration = 0
        self._left: int | None = None

    def feed(self, p: Progress) -> int | None:
        """A new limit to set, or None to keep the current one."""
        if p.status != "active" or p.iterations <= self._iteration:
            return None
        self._iteration = p.iterations
        before, self._left = self._left, p.remaining
        if before is None or p.remaining < before * self.stall or self.limit >= self.ceiling:
            return None
        self.limit = min(self.limit * 2, self.ceiling)
        return self.limit
