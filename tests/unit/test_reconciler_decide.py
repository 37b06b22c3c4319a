"""The reconciler's policy, ``decide()``: pure, so every branch is checked without a node."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from corral.controller.reconciler import BACKOFF_MAX, CRASH_WINDOW, Action, Reconciler, decide
from corral.node.spec import ExitInfo, ObservedInstance
from corral.store.models import Instance

NOW = 1000.0


def _inst(
    desired: str = "running",
    state: str = "running",
    policy: str = "on-failure",
    pid: int | None = 4242,
    reason: str = "",
) -> Instance:
    return Instance(
        id="i-0123456789abcdef0",
        name="web",
        desired_state=desired,
        state=state,
        restart_policy=policy,
        pid=pid,
        state_reason=reason,
    )


def _obs(
    running: bool, pid: int | None = None, reason: str | None = None, detail: str = ""
) -> ObservedInstance:
    exit_ = ExitInfo(reason=reason, detail=detail) if reason else None
    return ObservedInstance(id="i-0123456789abcdef0", running=running, pid=pid, exit=exit_)


# -- desired terminated ----------------------------------------------------------------------
@pytest.mark.parametrize("obs", [None, _obs(True, 4242), _obs(False, reason="crashed")])
@pytest.mark.parametrize("state", ["shutting-down", "running", "stopped"])
def test_desired_terminated_destroys_whatever_is_observed(
    obs: ObservedInstance | None, state: str
) -> None:
    d = decide(_inst(desired="terminated", state=state), obs, now=NOW)
    assert d.action == Action.DESTROY
    assert d.reason == "finishing an interrupted termination"


# -- desired stopped -------------------------------------------------------------------------
def test_desired_stopped_but_running_is_stopped() -> None:
    d = decide(_inst(desired="stopped", state="stopping"), _obs(True, 4242), now=NOW)
    assert d.action == Action.STOP


@pytest.mark.parametrize("obs", [None, _obs(False, reason="requested")])
def test_desired_stopped_and_gone_is_marked_stopped_keeping_the_reason(
    obs: ObservedInstance | None,
) -> None:
    d = decide(_inst(desired="stopped", state="stopping", reason="User initiated"), obs, now=NOW)
    assert (d.action, d.reason) == (Action.MARK_STOPPED, "User initiated")


def test_desired_stopped_and_stopped_needs_nothing() -> None:
    d = decide(_inst(desired="stopped", state="stopped", pid=None), None, now=NOW)
    assert d.action == Action.NONE


# -- desired running, observed running -------------------------------------------------------
def test_running_as_recorded_needs_nothing() -> None:
    assert decide(_inst(), _obs(True, 4242), now=NOW).action == Action.NONE


@pytest.mark.parametrize(("state", "pid"), [("pending", None), ("running", 1), ("stopped", None)])
def test_found_running_with_another_record_is_marked_running(state: str, pid: int | None) -> None:
    d = decide(_inst(state=state, pid=pid), _obs(True, 4242), now=NOW)
    assert (d.action, d.reason) == (Action.MARK_RUNNING, "found running as pid 4242")


# -- desired running, not running ------------------------------------------------------------
@pytest.mark.parametrize("state", ["pending", "stopped", "stopping"])
@pytest.mark.parametrize("obs", [None, _obs(False, reason="crashed")])
def test_interrupted_start_is_resumed(state: str, obs: ObservedInstance | None) -> None:
    d = decide(_inst(state=state, pid=None), obs, now=NOW)
    assert (d.action, d.reason) == (Action.START, "resuming an interrupted start")


def test_guest_shutdown_with_policy_always_restarts() -> None:
    d = decide(_inst(policy="always"), _obs(False, reason="guest-shutdown"), now=NOW)
    assert d.action == Action.RESTART
    assert "restart policy always" in d.reason


@pytest.mark.parametrize("policy", ["on-failure", "never"])
def test_guest_shutdown_without_policy_always_is_marked_stopped_as_instance_initiated(
    policy: str,
) -> None:
    d = decide(_inst(policy=policy), _obs(False, reason="guest-shutdown"), now=NOW)
    assert d.action == Action.MARK_STOPPED
    assert d.reason.startswith("Client.InstanceInitiatedShutdown")


@pytest.mark.parametrize("policy", ["always", "on-failure"])
def test_crash_restarts_under_policies_always_and_on_failure(policy: str) -> None:
    d = decide(
        _inst(policy=policy), _obs(False, reason="crashed", detail="killed by SIGKILL"), now=NOW
    )
    assert d.action == Action.RESTART
    assert d.reason == f"QEMU killed by SIGKILL; restarted (restart policy {policy})"


def test_crash_without_detail_says_qemu_exited_unexpectedly() -> None:
    d = decide(_inst(), _obs(False, reason="crashed"), now=NOW)
    assert d.reason.startswith("QEMU exited unexpectedly; restarted")


def test_crash_with_policy_never_is_marked_stopped_as_internal_error() -> None:
    d = decide(
        _inst(policy="never"), _obs(False, reason="crashed", detail="killed by SIGKILL"), now=NOW
    )
    assert d.action == Action.MARK_STOPPED
    assert d.reason == "Server.InternalError: QEMU killed by SIGKILL (restart policy never)"


@pytest.mark.parametrize("obs", [None, _obs(False), _obs(False, reason="unknown")])
def test_exit_nobody_saw_is_reported_as_such_and_restarted(obs: ObservedInstance | None) -> None:
    d = decide(_inst(), obs, now=NOW)
    assert d.action == Action.RESTART
    assert d.reason.startswith("QEMU exited while Corral was not watching")


def test_exit_nobody_saw_with_policy_never_is_marked_stopped() -> None:
    d = decide(_inst(policy="never"), None, now=NOW)
    assert d.action == Action.MARK_STOPPED
    assert d.reason == (
        "Server.InternalError: QEMU exited while Corral was not watching (restart policy never)"
    )


# -- crash-loop back-off ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("policy", "reason"),
    [
        ("on-failure", "crashed"),
        ("always", "crashed"),
        ("always", "guest-shutdown"),
        ("on-failure", "unknown"),
    ],
)
def test_restart_due_later_waits(policy: str, reason: str) -> None:
    d = decide(_inst(policy=policy), _obs(False, reason=reason), now=NOW, next_restart_at=NOW + 1)
    assert d.action == Action.WAIT
    assert d.reason  # the reason is kept for the log


def test_restart_at_its_due_time_goes_ahead() -> None:
    d = decide(_inst(), _obs(False, reason="crashed"), now=NOW, next_restart_at=NOW)
    assert d.action == Action.RESTART


def test_back_off_does_not_hold_up_a_policy_never_stop() -> None:
    d = decide(
        _inst(policy="never"), _obs(False, reason="crashed"), now=NOW, next_restart_at=NOW + 100
    )
    assert d.action == Action.MARK_STOPPED


# -- Reconciler.next_restart_at --------------------------------------------------------------
def _reconciler() -> Reconciler:
    ctrl: Any = SimpleNamespace(settings=SimpleNamespace(reconcile_interval=3600))
    return Reconciler(ctrl)


def test_no_or_one_recent_crash_allows_an_immediate_restart() -> None:
    rec = _reconciler()
    assert rec.next_restart_at("i-a") == 0.0
    rec.crashes["i-a"] = [time.monotonic()]
    assert rec.next_restart_at("i-a") == 0.0


@pytest.mark.parametrize(("crashes", "delay"), [(2, 2.0), (3, 4.0), (4, 8.0), (6, 32.0)])
def test_back_off_doubles_with_each_recent_crash(crashes: int, delay: float) -> None:
    rec = _reconciler()
    last = time.monotonic()
    rec.crashes["i-a"] = [last - crashes + i + 1 for i in range(crashes)]
    assert rec.next_restart_at("i-a") == pytest.approx(last + delay)


def test_back_off_is_capped() -> None:
    rec = _reconciler()
    last = time.monotonic()
    rec.crashes["i-a"] = [last - 0.1 * (20 - i) for i in range(20)]
    assert rec.next_restart_at("i-a") == pytest.approx(rec.crashes["i-a"][-1] + BACKOFF_MAX)


def test_crashes_outside_the_window_are_forgotten() -> None:
    rec = _reconciler()
    now = time.monotonic()
    rec.crashes["i-a"] = [now - CRASH_WINDOW - 5, now - CRASH_WINDOW - 1, now - 1]
    assert rec.next_restart_at("i-a") == 0.0
    assert rec.crashes["i-a"] == [now - 1]


def test_back_off_is_kept_per_instance() -> None:
    rec = _reconciler()
    now = time.monotonic()
    rec.crashes["i-a"] = [now - 2, now - 1]
    assert rec.next_restart_at("i-a") > 0
    assert rec.next_restart_at("i-b") == 0.0
