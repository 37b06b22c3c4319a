"""Small helpers the action modules share."""

from __future__ import annotations

from typing import NoReturn

from corral.api.ec2.errors import Ec2Error


def dry_run_ok() -> NoReturn:
    raise Ec2Error("DryRunOperation", "Request would have succeeded, but DryRun flag is set.")


def not_found(code: str, what: str, gone: list[str]) -> Ec2Error:
    many = len(gone) > 1
    return Ec2Error(
        code,
        f"The {what}{'s' if many else ''} '{', '.join(gone)}' do{'' if many else 'es'} not exist",
    )
