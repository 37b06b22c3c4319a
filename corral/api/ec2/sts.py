"""STS at the EC2 endpoint: ``GetCallerIdentity`` for tools that ask who they are before
anything else (Ansible's amazon.aws modules, Terraform's provider, many scripts). A request
signed for service ``sts`` comes here; the answer and errors are in STS's XML (namespace
2011-06-15). Corral has accounts with access keys and no IAM users: the key's "user" is its
account, named ``arn:aws:iam::<account id>:user/<account name>``."""

from __future__ import annotations

import base64
import hashlib

from corral.api.ec2.errors import Ec2Error
from corral.api.ec2.xml import _text
from corral.controller.accounts import Caller

NAMESPACE = "https://sts.amazonaws.com/doc/2011-06-15/"
ACTIONS = ("GetCallerIdentity",)
# STS actions Corral knows of and does not offer: there are no roles, sessions or federation
UNSUPPORTED = (
    "AssumeRole",
    "AssumeRoleWithSAML",
    "AssumeRoleWithWebIdentity",
    "AssumeRoot",
    "DecodeAuthorizationMessage",
    "GetAccessKeyInfo",
    "GetDelegatedAccessToken",
    "GetFederationToken",
    "GetSessionToken",
    "GetWebIdentityToken",
)


def user_id(account_id: str) -> str:
    """A stable unique id in the form of an IAM user's (``AIDA`` and 17 characters)."""
    digest = hashlib.sha256(f"corral-user:{account_id}".encode()).digest()
    return "AIDA" + base64.b32encode(digest).decode()[:17]


def arn(caller: Caller) -> str:
    return f"arn:aws:iam::{caller.account_id}:user/{caller.account_name}"


def answer(action: str, pairs: list[tuple[str, str]], caller: Caller, request_id: str) -> bytes:
    """The STS answer to a request signed for ``sts``; Ec2Error (rendered by ``error``)
    for anything else."""
    if not action:
        raise Ec2Error("MissingAction", "The request must contain the parameter Action")
    if action not in ACTIONS:
        if action in UNSUPPORTED:
            raise Ec2Error(
                "UnsupportedOperation", f"The STS action {action} is not supported by Corral"
            )
        raise Ec2Error("InvalidAction", f"Could not find operation {action} for version 2011-06-15")
    for name, _ in pairs:
        if name not in ("Action", "Version") and not name.lower().startswith("x-amz-"):
            raise Ec2Error(
                "UnknownParameter", f"The parameter {name} is not recognized for {action}"
            )
    result = (
        f"<Arn>{_text(arn(caller))}</Arn><UserId>{user_id(caller.account_id)}</UserId>"
        f"<Account>{caller.account_id}</Account>"
    )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<{action}Response xmlns="{NAMESPACE}">'
        f"<{action}Result>{result}</{action}Result>"
        f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>"
        f"</{action}Response>"
    ).encode()


def error(err: Ec2Error, request_id: str) -> bytes:
    kind = "Receiver" if err.status >= 500 else "Sender"
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<ErrorResponse xmlns="{NAMESPACE}">'
        f"<Error><Type>{kind}</Type><Code>{_text(err.code)}</Code>"
        f"<Message>{_text(err.message)}</Message></Error>"
        f"<RequestId>{request_id}</RequestId></ErrorResponse>"
    ).encode()
