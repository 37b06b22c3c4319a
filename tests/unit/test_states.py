"""The instance state machine: which requests act, which answer at once, which are refused."""

from __future__ import annotations

import pytest

from corral.controller import states
from corral.controller.states import State
from corral.errors import Code, WrongState

ACTS = "acts"
NOOP = "noop"
REFUSED = "refused"

# request -> state -> expected answer; every pair is listed so a change shows up here
TABLE: dict[str, dict[State, str]] = {
    "start": {
        State.PENDING: NOOP,
        State.RUNNING: NOOP,
        State.SHUTTING_DOWN: REFUSED,
        State.TERMINATED: REFUSED,
        State.STOPPING: REFUSED,
        State.STOPPED: ACTS,
    },
    "stop": {
        State.PENDING: ACTS,
        State.RUNNING: ACTS,
        State.SHUTTING_DOWN: REFUSED,
        State.TERMINATED: REFUSED,
        State.STOPPING: NOOP,
        State.STOPPED: NOOP,
    },
    "reboot": {
        State.PENDING: REFUSED,
        State.RUNNING: ACTS,
        State.SHUTTING_DOWN: REFUSED,
        State.TERMINATED: REFUSED,
        State.STOPPING: REFUSED,
        State.STOPPED: REFUSED,
    },
    "terminate": {
        State.PENDING: ACTS,
        State.RUNNING: ACTS,
        State.SHUTTING_DOWN: NOOP,
        State.TERMINATED: NOOP,
        State.STOPPING: ACTS,
        State.STOPPED: ACTS,
    },
}
CASES = [(req, st, want) for req, row in TABLE.items() for st, want in row.items()]


def test_table_covers_every_request_and_state() -> None:
    for request in ("start", "stop", "reboot", "terminate"):
        assert set(TABLE[request]) == set(State)


@pytest.mark.parametrize(
    ("request_", "state", "expected"), CASES, ids=[f"{r}-from-{s}-{w}" for r, s, w in CASES]
)
def test_check_acts_answers_noop_or_refuses_with_wrong_state(
    request_: str, state: State, expected: str
) -> None:
    if expected == REFUSED:
        with pytest.raises(WrongState) as info:
            states.check(request_, state.value, "web")
        assert info.value.code == Code.WRONG_STATE
        assert info.value.resource == "instance"
        assert f"cannot {request_} instance web while it is {state.value}" in info.value.message
        assert info.value.http_status == 409
    else:
        assert states.check(request_, state.value, "web") is (expected == ACTS)


def test_refusal_message_says_what_to_do() -> None:
    with pytest.raises(WrongState, match="start it first"):
        states.check("reboot", "stopped", "web")
    with pytest.raises(WrongState, match="wait until it has stopped"):
        states.check("start", "stopping", "web")


def test_modify_is_allowed_only_when_stopped_and_the_refusal_names_the_fix() -> None:
    assert states.check("modify", "stopped", "web") is True
    with pytest.raises(WrongState) as info:
        states.check("modify", "running", "web")
    assert info.value.message.endswith("; stop it first")


@pytest.mark.parametrize(
    ("state", "code"),
    [
        ("pending", 0),
        ("running", 16),
        ("shutting-down", 32),
        ("terminated", 48),
        ("stopping", 64),
        ("stopped", 80),
    ],
)
def test_state_codes_are_ec2s(state: str, code: int) -> None:
    assert states.code(state) == code


def test_unknown_state_is_rejected() -> None:
    with pytest.raises(ValueError):
        states.code("exploded")
    with pytest.raises(ValueError):
        states.check("start", "exploded", "web")
