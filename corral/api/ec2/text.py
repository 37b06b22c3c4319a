"""Every string a Query API request carries is checked once, at the door: one holding a
character XML 1.0 forbids is refused with InvalidParameterValue naming the parameter, since
echoing it later (a group's description, a tag) would make the account's answers unparseable."""

from __future__ import annotations

from collections.abc import Iterable

from corral import xmltext
from corral.api.ec2.errors import Ec2Error


def check_params(pairs: Iterable[tuple[str, str]]) -> None:
    for name, value in pairs:
        bad_name = xmltext.why(name)
        if bad_name is not None:
            raise Ec2Error(
                "InvalidParameter",
                f"The parameter name {name!a} is invalid: {bad_name}.",
            )
        problem = xmltext.why(value)
        if problem is not None:
            raise Ec2Error(
                "InvalidParameterValue", f"Value for parameter {name} is invalid: {problem}."
            )
