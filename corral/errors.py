"""One error root for all of Corral, with stable codes.

Each code maps to one HTTP status and one EC2 error code (the EC2 front door may refine the
code per resource, e.g. ``InvalidInstanceID.NotFound``). Messages say what is wrong and what to do.
"""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
    INVALID = "invalid"
    NOT_FOUND = "not_found"
    EXISTS = "exists"
    WRONG_STATE = "wrong_state"
    NO_RESOURCES = "no_resources"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    ENVIRONMENT = "environment"
    INTERNAL = "internal"
    CANCELLED = "cancelled"
    TOO_LARGE = "too_large"


HTTP_STATUS: dict[Code, int] = {
    Code.INVALID: 400,
    Code.NOT_FOUND: 404,
    Code.EXISTS: 409,
    Code.WRONG_STATE: 409,
    Code.NO_RESOURCES: 409,
    Code.UNAUTHORIZED: 401,
    Code.FORBIDDEN: 403,
    Code.ENVIRONMENT: 503,
    Code.INTERNAL: 500,
    Code.CANCELLED: 409,
    Code.TOO_LARGE: 413,
}

EC2_CODE: dict[Code, str] = {
    Code.INVALID: "InvalidParameterValue",
    Code.NOT_FOUND: "InvalidParameterValue",
    Code.EXISTS: "InvalidParameterValue",
    Code.WRONG_STATE: "IncorrectState",
    Code.NO_RESOURCES: "InsufficientInstanceCapacity",
    Code.UNAUTHORIZED: "AuthFailure",
    Code.FORBIDDEN: "UnauthorizedOperation",
    Code.ENVIRONMENT: "Unavailable",
    Code.INTERNAL: "InternalError",
    Code.CANCELLED: "IncorrectState",
    Code.TOO_LARGE: "RequestEntityTooLarge",
}


class CorralError(Exception):
    """An error a user can act on: ``code`` says what kind, ``message`` says what to do.

    ``field`` names the bad input when there is one; ``resource`` names the kind of thing
    (``instance``, ``image`` …) so front doors can pick a precise code. ``reason`` is a finer,
    stable word within the code (``guest-holds-disk`` …) that a caller across the node wire may
    act on, since exception classes do not cross it.
    """

    reason: str | None = None

    code: Code = Code.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        code: Code | None = None,
        field: str | None = None,
        resource: str | None = None,
        ec2_code: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        if code is not None:
            self.code = code
        self.message = message
        self.field = field
        self.resource = resource
        self.ec2_code = ec2_code  # a precise EC2 error code where the table's is too coarse

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    def to_dict(self) -> dict[str, str | None]:
        return {
            "code": str(self.code),
            "message": self.message,
            "field": self.field,
            "resource": self.resource,
        }


class Invalid(CorralError):
    code = Code.INVALID


class NotFound(CorralError):
    code = Code.NOT_FOUND


class Exists(CorralError):
    code = Code.EXISTS


class WrongState(CorralError):
    code = Code.WRONG_STATE


class NoResources(CorralError):
    code = Code.NO_RESOURCES


class Unauthorized(CorralError):
    code = Code.UNAUTHORIZED


class Forbidden(CorralError):
    code = Code.FORBIDDEN


class EnvironmentProblem(CorralError):
    """The host lacks something Corral needs (a binary, root, a writable directory)."""

    code = Code.ENVIRONMENT


class Cancelled(CorralError):
    code = Code.CANCELLED


class TooLarge(CorralError):
    """A request body over the route's limit (refused before it is read whole)."""

    code = Code.TOO_LARGE


class DryRunPassed(CorralError):
    """Every check passed and nothing was done (EC2's ``DryRun``); raised before the commit."""

    code = Code.INVALID
