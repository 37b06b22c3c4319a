"""AWS Signature Version 4, verified server-side: the Authorization header or a presigned query,
following exactly the headers the request says it signed. Checks the credential scope (date,
region, service ``ec2`` or ``sts``), the clock (±15 minutes) and a presigned URL's expiry; any mismatch
is an ``AuthFailure``. botocore is only the test oracle, never used here."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote

from corral.api.ec2.errors import Ec2Error

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "ec2"
SERVICES = (SERVICE, "sts")  # the one endpoint answers EC2 and STS's GetCallerIdentity
MAX_SKEW = dt.timedelta(minutes=15)
MAX_EXPIRES = 7 * 24 * 3600
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_AMZ_DATE = "%Y%m%dT%H%M%SZ"
_AUTH_PART = re.compile(r"\s*([A-Za-z]+)\s*=\s*([^,\s]*)\s*,?")

SecretLookup = Callable[[str], Awaitable[str]]


@dataclass(frozen=True)
class Request:
    """What the verifier needs of an HTTP request: the raw path and query as sent."""

    method: str
    raw_path: str
    raw_query: str
    headers: list[tuple[str, str]]  # lower-case names, in order, repeats kept
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name]
        return ",".join(values) if values else None


@dataclass(frozen=True)
class Auth:
    key_id: str
    date: str  # YYYYMMDD of the scope
    region: str
    service: str
    signed_headers: list[str]
    signature: str
    timestamp: str
    presigned: bool
    expires: int = 0


def _fail(message: str, code: str = "AuthFailure") -> Ec2Error:
    return Ec2Error(code, message)


def parse(req: Request) -> Auth:
    header = req.header("authorization")
    query = parse_qsl(req.raw_query, keep_blank_values=True)
    qd = dict(query)
    if header is not None:
        algorithm, _, rest = header.strip().partition(" ")
        if algorithm != ALGORITHM:
            raise _fail(
                f"unsupported authorization {algorithm!r}: sign with {ALGORITHM} "
                "(Signature Version 4)",
                "IncompleteSignature",
            )
        parts = dict(_AUTH_PART.findall(rest))
        missing = [k for k in ("Credential", "SignedHeaders", "Signature") if k not in parts]
        if missing:
            raise _fail(
                f"the Authorization header lacks {', '.join(missing)}", "IncompleteSignature"
            )
        credential, signed, signature = (
            parts["Credential"],
            parts["SignedHeaders"],
            parts["Signature"],
        )
        timestamp = req.header("x-amz-date")
        if timestamp is None:
            date_header = req.header("date")
            if date_header is None:
                raise _fail("the request has neither X-Amz-Date nor Date", "IncompleteSignature")
            timestamp = _from_http_date(date_header)
        presigned, expires = False, 0
    elif "X-Amz-Algorithm" in qd:
        if qd["X-Amz-Algorithm"] != ALGORITHM:
            raise _fail(f"X-Amz-Algorithm must be {ALGORITHM}", "IncompleteSignature")
        missing = [
            k
            for k in ("X-Amz-Credential", "X-Amz-SignedHeaders", "X-Amz-Signature", "X-Amz-Date")
            if k not in qd
        ]
        if missing:
            raise _fail(f"the presigned query lacks {', '.join(missing)}", "IncompleteSignature")
        credential, signed, signature = (
            qd["X-Amz-Credential"],
            qd["X-Amz-SignedHeaders"],
            qd["X-Amz-Signature"],
        )
        timestamp, presigned = qd["X-Amz-Date"], True
        try:
            expires = int(qd.get("X-Amz-Expires", "900"))
        except ValueError as err:
            raise _fail("X-Amz-Expires must be a number of seconds") from err
        if not 1 <= expires <= MAX_EXPIRES:
            raise _fail(f"X-Amz-Expires must be 1-{MAX_EXPIRES} seconds")
    elif "AWSAccessKeyId" in qd or "Signature" in qd:
        raise _fail(
            "Signature Version 2 is not supported; sign with Signature Version 4",
            "IncompleteSignature",
        )
    else:
        raise _fail(
            "the request is not signed: sign it with AWS Signature Version 4 (an AWS "
            "SDK or the AWS CLI does this given an access key)",
            "MissingAuthenticationToken",
        )
    scope = credential.split("/")
    if len(scope) != 5 or scope[4] != "aws4_request" or not scope[0]:
        raise _fail(
            f"credential {credential!r} must be KEY/YYYYMMDD/REGION/ec2/aws4_request",
            "IncompleteSignature",
        )
    return Auth(
        key_id=scope[0],
        date=scope[1],
        region=scope[2],
        service=scope[3],
        signed_headers=[h for h in signed.split(";") if h],
        signature=signature,
        timestamp=timestamp,
        presigned=presigned,
        expires=expires,
    )


def _from_http_date(value: str) -> str:
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError) as err:
        raise _fail(f"Date header {value!r} is not an HTTP date", "IncompleteSignature") from err
    return when.astimezone(dt.UTC).strftime(_AMZ_DATE)


def check_scope(auth: Auth, region: str, now: dt.datetime) -> None:
    try:
        when = dt.datetime.strptime(auth.timestamp, _AMZ_DATE).replace(tzinfo=dt.UTC)
    except ValueError as err:
        raise _fail(
            f"X-Amz-Date {auth.timestamp!r} must look like 20260101T120000Z", "IncompleteSignature"
        ) from err
    if auth.service not in SERVICES:
        raise _fail(
            f"credential scope names service {auth.service!r}; this endpoint is "
            f"{' or '.join(repr(s) for s in SERVICES)}"
        )
    if auth.region != region:
        raise _fail(
            f"credential scope names region {auth.region!r}; this Corral is "
            f"{region!r} (set the client's region to {region})"
        )
    if auth.date != auth.timestamp[:8]:
        raise _fail(
            f"the credential scope date {auth.date} is not the request date {auth.timestamp[:8]}"
        )
    if auth.presigned:
        if now > when + dt.timedelta(seconds=auth.expires):
            raise _fail(
                f"the presigned request expired at "
                f"{(when + dt.timedelta(seconds=auth.expires)):%Y%m%dT%H%M%SZ}",
                "RequestExpired",
            )
        if when - now > MAX_SKEW:
            raise _fail("the presigned request is dated in the future", "RequestExpired")
    elif abs(now - when) > MAX_SKEW:
        raise _fail(
            f"the request is dated {auth.timestamp}, more than 15 minutes from the "
            f"server's time {now:%Y%m%dT%H%M%SZ}; fix the client's clock",
            "RequestExpired",
        )
    if "host" not in auth.signed_headers:
        raise _fail("the Host header must be signed (SignedHeaders lacks host)")
    if (
        not auth.presigned
        and "x-amz-date" not in auth.signed_headers
        and "date" not in auth.signed_headers
    ):
        raise _fail("the request date must be signed (SignedHeaders lacks x-amz-date)")


def canonical_request(req: Request, auth: Auth) -> str:
    path = quote(unquote(req.raw_path) or "/", safe="/~")
    pairs = [
        (quote(k, safe="-_.~"), quote(v, safe="-_.~"))
        for k, v in parse_qsl(req.raw_query, keep_blank_values=True)
        if not (auth.presigned and k == "X-Amz-Signature")
    ]
    query = "&".join(f"{k}={v}" for k, v in sorted(pairs))
    lines = []
    for name in auth.signed_headers:
        values = [" ".join(v.split()) for k, v in req.headers if k == name]
        if not values:
            raise _fail(f"the signed header {name!r} is not in the request")
        lines.append(f"{name}:{','.join(values)}")
    declared = req.header("x-amz-content-sha256")
    actual = hashlib.sha256(req.body).hexdigest() if req.body else EMPTY_SHA256
    if declared is not None and declared != "UNSIGNED-PAYLOAD" and declared != actual:
        raise _fail("the body does not match its X-Amz-Content-SHA256")
    payload = declared or actual
    return "\n".join(
        [
            req.method.upper(),
            path,
            query,
            "\n".join(lines) + "\n",
            ";".join(auth.signed_headers),
            payload,
        ]
    )


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def signature(secret: str, auth: Auth, creq: str) -> str:
    scope = f"{auth.date}/{auth.region}/{auth.service}/aws4_request"
    to_sign = "\n".join(
        [ALGORITHM, auth.timestamp, scope, hashlib.sha256(creq.encode()).hexdigest()]
    )
    key = signing_key(secret, auth.date, auth.region, auth.service)
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


async def verify(
    req: Request, region: str, secret_for: SecretLookup, now: dt.datetime | None = None
) -> str:
    """The access key id of a correctly signed request; Ec2Error otherwise."""
    return (await verify_auth(req, region, secret_for, now)).key_id


async def verify_auth(
    req: Request, region: str, secret_for: SecretLookup, now: dt.datetime | None = None
) -> Auth:
    """The checked authorization of a correctly signed request (its key id and the service
    it was signed for); Ec2Error otherwise."""
    auth = parse(req)
    check_scope(auth, region, now or dt.datetime.now(dt.UTC))
    secret = await secret_for(auth.key_id)
    expected = signature(secret, auth, canonical_request(req, auth))
    if not hmac.compare_digest(expected, auth.signature):
        raise _fail(
            "the request signature does not match: check the secret access key and "
            "that nothing changed the request after signing"
        )
    return auth
