"""What ``corral apply`` will do: the service file's instances against what runs, as a list of
steps (create, replace, remove, start, unchanged) with the reasons and the volumes involved.
Pure: the controller gathers the facts, this decides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field

from corral.appliances.render import Desired, parse_parts
from corral.errors import Exists

Action = Literal["create", "replace", "remove", "start", "unchanged"]
ORDER: dict[str, int] = {"create": 0, "replace": 1, "start": 2, "remove": 3, "unchanged": 4}
PART_REASONS = {
    "size": "type, cpus, memory or disk changed",
    "keys": "SSH keys changed",
    "files": "config files changed",
    "run": "run or reload command changed",
    "volumes": "volumes or mount points changed",
    "health": "health check changed",
    "restart": "restart policy changed",
}


@dataclass
class Current:
    """A live instance, as the plan needs to know it."""

    id: str
    name: str
    state: str
    appliance: str | None = None
    service: str | None = None
    config: str | None = None
    parts: str = ""


@dataclass
class VolumeFact:
    id: str
    state: str
    attached_to: str | None = None  # instance name
    size_gib: int = 0


@dataclass
class Facts:
    current: list[Current] = field(default_factory=list)
    volumes: dict[str, VolumeFact] = field(default_factory=dict)  # by name
    image_names: dict[str, str] = field(default_factory=dict)  # image id -> name:version


class Step(BaseModel):
    action: Action
    instance: str
    service: str | None = None
    instance_id: str | None = None
    reasons: list[str] = Field(default_factory=list)
    volumes: list[str] = Field(default_factory=list, description="what happens to volumes")


class Plan(BaseModel):
    appliance: str
    steps: list[Step] = Field(default_factory=list)

    @property
    def changes(self) -> bool:
        return any(s.action != "unchanged" for s in self.steps)

    def count(self, action: Action) -> int:
        return sum(1 for s in self.steps if s.action == action)


def compute(appliance: str, desired: list[Desired], facts: Facts) -> Plan:
    """The steps that make ``facts`` what ``desired`` says, creations first, removals last."""
    by_name = {c.name: c for c in facts.current}
    steps: list[Step] = []
    for d in desired:
        cur = by_name.get(d.name)
        if cur is not None and cur.appliance != appliance:
            raise Exists(
                f"instance {d.name} ({cur.id}) exists and is not part of appliance "
                f"{appliance}; rename or remove it, or rename the service",
                field=f"services.{d.service}",
                resource="instance",
            )
        vols = _volumes(d, facts, cur)
        if cur is None:
            steps.append(Step(action="create", instance=d.name, service=d.service, volumes=vols))
        elif cur.config != d.config:
            steps.append(
                Step(
                    action="replace",
                    instance=d.name,
                    service=d.service,
                    instance_id=cur.id,
                    reasons=_reasons(cur, d, facts),
                    volumes=vols,
                )
            )
        elif cur.state == "stopped":
            steps.append(
                Step(
                    action="start",
                    instance=d.name,
                    service=d.service,
                    instance_id=cur.id,
                    reasons=["it is stopped"],
                )
            )
        else:
            steps.append(
                Step(action="unchanged", instance=d.name, service=d.service, instance_id=cur.id)
            )
    wanted = {d.name for d in desired}
    for cur in facts.current:
        if cur.appliance == appliance and cur.name not in wanted:
            kept = [
                f"keep {n}" for n, v in sorted(facts.volumes.items()) if v.attached_to == cur.name
            ]
            steps.append(
                Step(
                    action="remove",
                    instance=cur.name,
                    service=cur.service,
                    instance_id=cur.id,
                    reasons=["no longer in the service file"],
                    volumes=kept,
                )
            )
    steps.sort(key=lambda s: ORDER[s.action])
    return Plan(appliance=appliance, steps=steps)


def _volumes(d: Desired, facts: Facts, cur: Current | None) -> list[str]:
    out = []
    for v in d.volumes:
        name = d.volume_name(v)
        have = facts.volumes.get(name)
        if have is None:
            out.append(f"create {name} ({v.gib}G, ext4, mounted at {v.mount})")
            continue
        if have.attached_to not in (None, d.name):
            raise Exists(
                f"volume {name} ({have.id}) is attached to {have.attached_to}; "
                f"detach it or remove it before {d.name} can use it",
                field=f"services.{d.service}.volumes",
                resource="volume",
            )
        if have.state not in ("available", "in-use"):
            raise Exists(
                f"volume {name} ({have.id}) is {have.state}; wait for it or remove it",
                field=f"services.{d.service}.volumes",
                resource="volume",
            )
        note = (
            "" if have.size_gib == v.gib else f"; stays {have.size_gib}G (volumes are not resized)"
        )
        out.append(f"{'keep' if cur is not None else 'reuse'} {name}{note}")
    return out


def _reasons(cur: Current, d: Desired, facts: Facts) -> list[str]:
    before = parse_parts(cur.parts)
    out = []
    for key, value in d.parts.items():
        if before.get(key) == value:
            continue
        if key == "image":
            old = facts.image_names.get(before.get("image", ""), before.get("image", "?"))
            out.append(f"image {old} -> {facts.image_names.get(value, value)}")
        else:
            out.append(PART_REASONS.get(key, f"{key} changed"))
    return out or ["config changed"]
