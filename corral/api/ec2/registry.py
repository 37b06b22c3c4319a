"""The action table: each resource module registers its handlers with ``@action``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from corral.api.context import ApiContext
from corral.api.ec2.params import ParamSpec
from corral.api.ec2.parse import Params
from corral.controller.accounts import Caller
from corral.controller.service import Controller


@dataclass
class Call:
    """One EC2 request: who asks, with which parameters, against which Corral."""

    api: ApiContext
    caller: Caller
    p: Params
    action: str

    @property
    def ctrl(self) -> Controller:
        return self.api.controller

    @property
    def dry_run(self) -> bool:
        return self.p.flag("DryRun")


Handler = Callable[[Call], Awaitable[dict[str, Any]]]
ACTIONS: dict[str, Handler] = {}
PARAMS: dict[str, ParamSpec] = {}  # what each action accepts (corral/api/ec2/params.py)

# AWS actions Corral knows of but does not offer: they answer UnsupportedOperation (400)
UNSUPPORTED = (
    "CreateNetworkInterface",
    "CopyImage",
    "CopySnapshot",
    "DescribeVolumeStatus",
    "DescribeSpotInstanceRequests",
    "RequestSpotInstances",
    "DescribeLaunchTemplates",
    "CreateLaunchTemplate",
    "ImportImage",
    "DescribeIamInstanceProfileAssociations",
    "AssociateIamInstanceProfile",
    "DescribeVolumeAttribute",
    "ModifyVolumeAttribute",
    "DescribeSnapshotAttribute",
    "ModifySnapshotAttribute",
    "DescribeHosts",
    "DescribeReservedInstances",
)


def action(
    name: str, accepts: tuple[str, ...], unsupported: tuple[str, ...] = ()
) -> Callable[[Handler], Handler]:
    """Register a handler with the parameters it honours (``accepts``) and the AWS parameters
    of the action it refuses (``unsupported``); any other name is ``UnknownParameter``."""

    def register(fn: Handler) -> Handler:
        ACTIONS[name] = fn
        PARAMS[name] = ParamSpec(accepts, unsupported)
        return fn

    return register
