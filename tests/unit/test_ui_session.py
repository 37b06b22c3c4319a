"""The dashboard's sign-in: an access key is traded for a server-side session cookie (HttpOnly,
SameSite=Strict); the cookie carries API calls, changes need X-Corral-UI, the page never holds
the secret, and static files cannot reach outside their folder."""

from __future__ import annotations

import httpx

from corral.api.ui import COOKIE
from tests.unit.test_api_rest import _error, _run


async def _signed_in(anonymous: httpx.AsyncClient, credentials: tuple[str, str]) -> str:
    key_id, secret = credentials
    resp = await anonymous.post(
        "/ui/login", json={"access_key_id": key_id, "secret_access_key": secret}
    )
    assert resp.status_code == 200, resp.text
    cookie = resp.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert secret not in cookie and key_id not in cookie
    return anonymous.cookies[COOKIE]


async def test_a_session_carries_reads_and_marked_changes_only(
    anonymous: httpx.AsyncClient, api: httpx.AsyncClient, credentials: tuple[str, str]
) -> None:
    _error(await anonymous.get("/v1/instances"), 401, "unauthorized")
    await _signed_in(anonymous, credentials)
    me = (await anonymous.get("/ui/me")).json()
    assert me == {"signed_in": True, "account": "admin", "admin": True}
    assert (await anonymous.get("/v1/instances")).status_code == 200
    inst = await _run(api, name="web1")
    # a change without the header a cross-site form cannot send is refused
    _error(await anonymous.post(f"/v1/instances/{inst['id']}/stop", json={}), 403, "forbidden")
    resp = await anonymous.post(
        f"/v1/instances/{inst['id']}/stop", json={}, headers={"X-Corral-UI": "1"}
    )
    assert resp.status_code == 202, resp.text
    await anonymous.post("/ui/logout")
    _error(await anonymous.get("/v1/instances"), 401, "unauthorized")
    assert (await anonymous.get("/ui/me")).status_code == 401


async def test_a_wrong_key_gets_no_session(
    anonymous: httpx.AsyncClient, credentials: tuple[str, str]
) -> None:
    resp = await anonymous.post(
        "/ui/login", json={"access_key_id": credentials[0], "secret_access_key": "wrong"}
    )
    _error(resp, 401, "unauthorized")
    assert COOKIE not in anonymous.cookies
    anonymous.cookies.set(COOKIE, "made-up")
    _error(await anonymous.get("/v1/instances"), 401, "unauthorized")


async def test_the_page_and_its_files_are_served_without_secrets(
    anonymous: httpx.AsyncClient, credentials: tuple[str, str]
) -> None:
    page = await anonymous.get("/ui")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/ui/static/vendor/xterm/xterm.js" in page.text and "http" not in page.text.lower()
    for path in ("app.js", "app.css", "vendor/xterm/xterm.js", "vendor/xterm/xterm.css"):
        resp = await anonymous.get(f"/ui/static/{path}")
        assert resp.status_code == 200 and resp.content, path
    await _signed_in(anonymous, credentials)
    assert credentials[1] not in (await anonymous.get("/ui")).text
    for path in ("../ui.py", "..%2Fui.py", "/etc/passwd"):
        assert (await anonymous.get(f"/ui/static/{path}")).status_code == 404, path
