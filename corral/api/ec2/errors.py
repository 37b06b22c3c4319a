"""EC2 error codes and statuses, and the mapping from Corral's error codes per resource."""

from __future__ import annotations

from corral.errors import Code, CorralError, DryRunPassed

STATUS = {
    "AuthFailure": 401,
    "MissingAuthenticationToken": 401,
    "UnauthorizedOperation": 403,
    "DryRunOperation": 412,
    "InternalError": 500,
    "Unavailable": 503,
    "InsufficientInstanceCapacity": 500,
    "ServiceUnavailable": 503,
    "RequestEntityTooLarge": 413,
    "UnsupportedHttpVerb": 405,
}

NOT_FOUND = {
    "instance": "InvalidInstanceID.NotFound",
    "image": "InvalidAMIID.NotFound",
    "key_pair": "InvalidKeyPair.NotFound",
    "security_group": "InvalidGroup.NotFound",
    "volume": "InvalidVolume.NotFound",
    "snapshot": "InvalidSnapshot.NotFound",
    "allocation": "InvalidAllocationID.NotFound",
    "association": "InvalidAssociationID.NotFound",
    "instance_type": "InvalidInstanceType",
    "account": "InvalidUserID.Malformed",
    "security_group_rule": "InvalidPermission.NotFound",
    "vpc": "InvalidVpcID.NotFound",
    "subnet": "InvalidSubnetID.NotFound",
    "internet_gateway": "InvalidInternetGatewayID.NotFound",
}
EXISTS = {
    "key_pair": "InvalidKeyPair.Duplicate",
    "security_group": "InvalidGroup.Duplicate",
    "security_group_rule": "InvalidPermission.Duplicate",
}
WRONG_STATE = {
    "instance": "IncorrectInstanceState",
    "image": "InvalidAMIID.Unavailable",
    "volume": "IncorrectState",
    "snapshot": "IncorrectState",
}
INVALID_FIELD = {
    "public_key": "InvalidKey.Format",
    "key_name": "InvalidKeyPair.Format",
}


class Ec2Error(Exception):
    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or STATUS.get(code, 400)


def missing(name: str) -> Ec2Error:
    return Ec2Error("MissingParameter", f"The request must contain the parameter {name}")


def invalid(name: str, value: object, why: str = "") -> Ec2Error:
    return Ec2Error(
        "InvalidParameterValue",
        f"Value ({value}) for parameter {name} is invalid." + (f" {why}" if why else ""),
    )


def from_corral(err: CorralError) -> Ec2Error:
    if isinstance(err, DryRunPassed):
        return Ec2Error("DryRunOperation", "Request would have succeeded, but DryRun flag is set.")
    code = err.ec2_code
    if code is None:
        res = err.resource or ""
        if err.code == Code.NOT_FOUND:
            code = NOT_FOUND.get(res, "InvalidParameterValue")
        elif err.code == Code.EXISTS:
            code = EXISTS.get(res, "InvalidParameterValue")
        elif err.code in (Code.WRONG_STATE, Code.CANCELLED):
            code = WRONG_STATE.get(res, "IncorrectState")
        elif err.code == Code.INVALID:
            code = INVALID_FIELD.get(err.field or "", "InvalidParameterValue")
        elif err.code == Code.NO_RESOURCES:
            code = (
                "InsufficientInstanceCapacity" if res in ("node", "") else "ResourceLimitExceeded"
            )
        elif err.code == Code.UNAUTHORIZED:
            code = "AuthFailure"
        elif err.code == Code.FORBIDDEN:
            code = "UnauthorizedOperation"
        elif err.code == Code.ENVIRONMENT:
            code = "Unavailable"
        elif err.code == Code.TOO_LARGE:
            code = "RequestEntityTooLarge"
        else:
            code = "InternalError"
    return Ec2Error(code, err.message)
