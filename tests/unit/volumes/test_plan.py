"""The plan of `corral apply`: the service file's instances against what runs."""

from __future__ import annotations

from typing import Any

import pytest

from corral.appliances import render, spec
from corral.appliances.plan import Current, Facts, VolumeFact, compute
from corral.errors import Exists

FILE: dict[str, Any] = {
    "name": "shop",
    "services": {
        "web": {
            "image": "tiny",
            "count": 2,
            "run": "httpd",
            "volumes": [{"name": "data", "size": "1G", "mount": "/srv/data"}],
        },
        "db": {"image": "tiny"},
    },
}
IMAGES = {"web": "ami-1", "db": "ami-1"}


def _desired(
    data: dict[str, Any] | None = None, images: dict[str, str] | None = None
) -> list[render.Desired]:
    return render.desired(spec.validate(data or FILE), images or IMAGES, "c.internal")


def _running(desired: list[render.Desired], state: str = "running") -> list[Current]:
    out = []
    for n, d in enumerate(desired):
        tags = d.tags("shop")
        out.append(
            Current(
                id=f"i-{n:017x}",
                name=d.name,
                state=state,
                appliance="shop",
                service=d.service,
                config=tags[render.TAG_CONFIG],
                parts=tags[render.TAG_PARTS],
            )
        )
    return out


def _actions(plan: object) -> list[tuple[str, str]]:
    return [(s.action, s.instance) for s in plan.steps]  # type: ignore[attr-defined]


def test_nothing_running_creates_everything_with_its_volumes() -> None:
    plan = compute("shop", _desired(), Facts())
    assert _actions(plan) == [("create", "web-1"), ("create", "web-2"), ("create", "db")]
    assert plan.steps[0].volumes == ["create web-1-data (1G, ext4, mounted at /srv/data)"]
    assert plan.changes and plan.count("create") == 3


def test_the_same_file_again_is_no_change() -> None:
    d = _desired()
    plan = compute("shop", d, Facts(current=_running(d)))
    assert not plan.changes
    assert {s.action for s in plan.steps} == {"unchanged"}


def test_a_new_image_replaces_and_says_why() -> None:
    before = _desired()
    after = _desired(images={"web": "ami-2", "db": "ami-1"})
    plan = compute(
        "shop",
        after,
        Facts(current=_running(before), image_names={"ami-1": "tiny:1", "ami-2": "tiny:2"}),
    )
    assert _actions(plan) == [("replace", "web-1"), ("replace", "web-2"), ("unchanged", "db")]
    assert plan.steps[0].reasons == ["image tiny:1 -> tiny:2"]


def test_a_changed_file_or_command_replaces() -> None:
    before = _desired()
    data = {
        **FILE,
        "services": {
            **FILE["services"],
            "db": {"image": "tiny", "files": {"/etc/db.conf": {"content": "port 5432\n"}}},
        },
    }
    plan = compute("shop", _desired(data), Facts(current=_running(before)))
    step = next(s for s in plan.steps if s.instance == "db")
    assert step.action == "replace" and step.reasons == ["config files changed"]


def test_fewer_instances_remove_the_rest_and_keep_their_volumes() -> None:
    before = _desired()
    data = {
        **FILE,
        "services": {**FILE["services"], "web": {**FILE["services"]["web"], "count": 1}},
    }
    vols = {"web-2-data": VolumeFact(id="vol-2", state="in-use", attached_to="web-2", size_gib=1)}
    plan = compute("shop", _desired(data), Facts(current=_running(before), volumes=vols))
    # web-1 becomes "web" (count 1): a new name is a new instance
    assert ("create", "web") in _actions(plan)
    removed = [s for s in plan.steps if s.action == "remove"]
    assert [s.instance for s in removed] == ["web-1", "web-2"]
    assert removed[1].volumes == ["keep web-2-data"]
    assert [a for a, _ in _actions(plan) if a != "unchanged"][-1] == "remove"  # last


def test_a_stopped_instance_is_started() -> None:
    d = _desired()
    plan = compute("shop", d, Facts(current=_running(d, "stopped")))
    assert {s.action for s in plan.steps} == {"start"}


def test_an_existing_volume_is_reused_and_not_resized() -> None:
    vols = {"web-1-data": VolumeFact(id="vol-1", state="available", size_gib=5)}
    plan = compute("shop", _desired(), Facts(volumes=vols))
    assert plan.steps[0].volumes == ["reuse web-1-data; stays 5G (volumes are not resized)"]


def test_an_instance_of_that_name_outside_the_appliance_is_a_conflict() -> None:
    other = Current(id="i-00000000000000001", name="db", state="running")
    with pytest.raises(Exists) as err:
        compute("shop", _desired(), Facts(current=[other]))
    assert err.value.field == "services.db" and "not part of appliance shop" in err.value.message


def test_a_volume_attached_elsewhere_is_a_conflict() -> None:
    vols = {"web-1-data": VolumeFact(id="vol-1", state="in-use", attached_to="stranger")}
    with pytest.raises(Exists) as err:
        compute("shop", _desired(), Facts(volumes=vols))
    assert err.value.field == "services.web.volumes" and "stranger" in err.value.message


def test_instances_of_other_appliances_are_left_alone() -> None:
    d = _desired()
    theirs = Current(id="i-00000000000000009", name="other", state="running", appliance="blog")
    plan = compute("shop", d, Facts(current=[*_running(d), theirs]))
    assert "other" not in [s.instance for s in plan.steps]
