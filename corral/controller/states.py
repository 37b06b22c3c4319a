"""The instance state machine: EC2's states and codes, and which requests each state allows."""

from __future__ import annotations

from enum import StrEnum

from corral.errors import WrongState


class State(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SHUTTING_DOWN = "shutting-down"
    TERMINATED = "terminated"
    STOPPING = "stopping"
    STOPPED = "stopped"


CODES = {
    State.PENDING: 0,
    State.RUNNING: 16,
    State.SHUTTING_DOWN: 32,
    State.TERMINATED: 48,
    State.STOPPING: 64,
    State.STOPPED: 80,
}

# request -> states it may start from; states in NOOP answer at once without doing anything
ALLOWED: dict[str, set[State]] = {
    "start": {State.STOPPED},
    "stop": {State.PENDING, State.RUNNING},
    "reboot": {State.RUNNING},
    "terminate": {State.PENDING, State.RUNNING, State.STOPPING, State.STOPPED},
    "modify": {State.STOPPED},
}
NOOP: dict[str, set[State]] = {
    "start": {State.PENDING, State.RUNNING},
    "stop": {State.STOPPING, State.STOPPED},
    "reboot": set(),
    "terminate": {State.SHUTTING_DOWN, State.TERMINATED},
    "modify": set(),
}
HINT = {
    "start": "wait until it has stopped",
    "stop": "it is already on its way out",
    "reboot": "start it first",
    "terminate": "",
    "modify": "stop it first",
}


def check(request: str, state: str, instance: str) -> bool:
    """True if ``request`` should act, False if it is a no-op; raises if not allowed now."""
    st = State(state)
    if st in NOOP[request]:
        return False
    if st not in ALLOWED[request]:
        raise WrongState(
            f"cannot {request} instance {instance} while it is {st}; {HINT[request]}".rstrip("; "),
            resource="instance",
        )
    return True


def code(state: str) -> int:
    return CODES[State(state)]
