"""Usage survives a kill -9 of the daemon: a volume's usage record is written with the volume,
so after the daemon is killed and started again the volume's GiB-seconds run from its
creation, without a gap before the restart and without being counted twice after it. No VM:
a volume is made by the node without one. Shares the session daemon (one restart)."""

from __future__ import annotations

import datetime as dt
import os

from corral import models
from corral.client import Client, Credentials
from tests.harness import Daemon, wait_for


def _seconds(c: Client, start: dt.datetime, end: dt.datetime) -> float:
    u = c.usage_show(None, start.isoformat(), end.isoformat())
    return sum(x.seconds for x in u.lines if x.kind == "volume")


def test_usage_survives_a_kill9_of_the_daemon(corral: Daemon) -> None:
    made = corral.client().account_create(f"meter{os.getpid()}")
    c = Client(Credentials(corral.url, made.key.access_key_id, made.key.secret_access_key, "t"))
    vol = c.volume_create(models.VolumeCreate(size=1)).volume
    wait_for(lambda: c.volume_show(vol.id).state == "available", 60, what="the volume")
    born = vol.created_at
    corral.kill9()
    killed = dt.datetime.now(dt.UTC)
    corral.start()
    try:
        c = Client(Credentials(corral.url, made.key.access_key_id, made.key.secret_access_key, "t"))
        after = dt.datetime.now(dt.UTC)
        since = born - dt.timedelta(hours=1)
        # before the restart: the whole time since creation (a lost record would show 0)
        assert abs(_seconds(c, since, killed) - (killed - born).total_seconds()) < 0.5
        # across it: still one volume's worth, once (a doubled record would show twice)
        assert abs(_seconds(c, since, after) - (after - born).total_seconds()) < 0.5
        usage = c.usage_show(None, since.isoformat(), after.isoformat())
        assert [(x.kind, x.resources) for x in usage.lines] == [("volume", 1)]
        bill = c.bill_show(f"{after:%Y-%m}")
        assert any(x.kind == "volume" and x.quantity > 0 for x in bill.lines)
    finally:
        c.volume_remove(vol.id)
