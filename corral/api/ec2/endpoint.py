"""The HTTP side: ``POST /`` (form) and ``GET /?Action=…``. Reads the raw body (SigV4 hashes
the exact bytes), authenticates, dispatches (a request signed for ``sts`` to ``sts.py``), and
answers XML; every failure is an EC2 error
document with a non-2xx status, never a 5xx for a request Corral does not implement."""

from __future__ import annotations

import logging
import uuid
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response

from corral.api.context import ApiContext
from corral.api.ec2 import sigv4, sts, xml
from corral.api.ec2.cache import PLACEHOLDER, AnswerCache
from corral.api.ec2.errors import Ec2Error, from_corral
from corral.api.ec2.parse import Params
from corral.api.ec2.registry import ACTIONS, PARAMS, UNSUPPORTED, Call
from corral.api.ec2.text import check_params
from corral.errors import CorralError

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)
XML_TYPE = "text/xml;charset=UTF-8"


def _answers(ctx: ApiContext) -> AnswerCache:
    cache = ctx.extra.get("ec2_answers")
    if not isinstance(cache, AnswerCache):
        cache = ctx.extra["ec2_answers"] = AnswerCache()
    return cache


def _load_actions() -> None:
    from corral.api.ec2 import (  # noqa: F401  (registers the handlers)
        addresses,
        catalog,
        credits,
        images,
        instance_attributes,
        instances,
        keypairs,
        placement_groups,
        security_group_rules,
        security_groups,
        tags,
        volumes,
        vpcs,
    )


@router.post("/")
@router.get("/")
async def ec2(request: Request) -> Response:
    request_id = str(uuid.uuid4())
    ctx: ApiContext = request.app.state.ctx
    body = await request.body()
    raw_query = request.scope.get("query_string", b"").decode("latin-1")
    pairs = parse_qsl(raw_query, keep_blank_values=True)
    ctype = request.headers.get("content-type", "")
    if body and (not ctype or ctype.startswith("application/x-www-form-urlencoded")):
        try:
            pairs += parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            return _error(
                Ec2Error("MalformedQueryString", "the body is not UTF-8 form data"), request_id
            )
    action_name = ""
    key = None
    generation = 0
    try:
        req = sigv4.Request(
            method=request.method,
            raw_path=request.scope.get("raw_path", b"/").decode("latin-1").split("?", 1)[0],
            raw_query=raw_query,
            headers=[
                (k.decode("latin-1").lower(), v.decode("latin-1"))
                for k, v in request.scope["headers"]
            ],
            body=body,
        )
        accounts = ctx.controller.accounts

        async def secret_for(key_id: str) -> str:
            try:
                await accounts.lookup(key_id)
            except CorralError as err:
                raise Ec2Error(
                    "AuthFailure",
                    f"AWS was not able to validate the provided access credentials ({err.message})",
                ) from err
            return accounts.secret_for(key_id)

        auth = await sigv4.verify_auth(req, ctx.settings.region, secret_for)
        caller = await accounts.lookup(auth.key_id)
        check_params(pairs)
        for name, value in pairs:
            if "\x00" in name or "\x00" in value:
                # no database keeps NUL in text (PostgreSQL refuses it): refuse it here
                raise Ec2Error(
                    "InvalidParameterValue",
                    f"parameter {name.replace(chr(0), '')!r} contains a NUL character; remove it",
                )
        if auth.service == "sts":
            action_name = next((v for k, v in pairs if k == "Action"), "")
            try:
                answer = sts.answer(action_name, pairs, caller, request_id)
            except Ec2Error as err:
                return Response(
                    sts.error(err, request_id), status_code=err.status, media_type=XML_TYPE
                )
            return Response(answer, media_type=XML_TYPE)
        action_name = next((v for k, v in pairs if k == "Action"), "")
        if not action_name:
            raise Ec2Error("MissingAction", "The request must contain the parameter Action")
        handler = ACTIONS.get(action_name)
        if handler is None:
            if action_name in UNSUPPORTED:
                raise Ec2Error(
                    "UnsupportedOperation", f"The action {action_name} is not supported by Corral"
                )
            raise Ec2Error(
                "InvalidAction", f"The action {action_name} is not valid for this web service."
            )
        # every name checked against what the action honours before anything else
        pairs = PARAMS[action_name].normalise(action_name, pairs)
        answers = _answers(ctx)
        key = answers.key(caller.account_id, action_name, pairs)
        generation = ctx.controller.store.generation
        if key is not None and (hit := answers.get(key, generation, request_id)) is not None:
            return Response(hit, media_type=XML_TYPE)
        result = await handler(Call(ctx, caller, Params(pairs), action_name))
    except Ec2Error as err:
        return _error(err, request_id)
    except CorralError as err:
        return _error(from_corral(err), request_id)
    except Exception:
        log.exception("EC2 %s failed", action_name or "request")
        return _error(
            Ec2Error("InternalError", "An internal error occurred; see the Corral log", 500),
            request_id,
        )
    if key is not None:
        body = xml.response(action_name, PLACEHOLDER, result)
        _answers(ctx).put(key, generation, body)
        return Response(
            body.replace(PLACEHOLDER.encode(), request_id.encode(), 1), media_type=XML_TYPE
        )
    return Response(xml.response(action_name, request_id, result), media_type=XML_TYPE)


@router.api_route("/", methods=["PUT", "DELETE", "PATCH", "OPTIONS"])
async def ec2_other_method(request: Request) -> Response:
    """The Query API speaks GET and POST; anything else gets an EC2 error, not REST JSON."""
    return _error(
        Ec2Error(
            "UnsupportedHttpVerb",
            f"The EC2 Query API takes GET or POST, not {request.method}; "
            "send the Action as a form (POST) or a query string (GET)",
        ),
        str(uuid.uuid4()),
    )


def _error(err: Ec2Error, request_id: str) -> Response:
    return Response(
        xml.error(err.code, err.message, request_id), status_code=err.status, media_type=XML_TYPE
    )


_load_actions()
