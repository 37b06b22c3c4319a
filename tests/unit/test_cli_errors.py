"""CLI input errors name the field and the fix (pydantic's own text ended in a bare link and
named no option; a bad --timeout was a traceback), --disk is bounded before anything is made,
and --key NAME means the key pair NAME even when a local file has that name. The CLI runs
in-process against the unit app (fake node) served by uvicorn on a loopback port."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from corral import config
from corral.api.app import create_app
from corral.api.context import ApiContext
from corral.cli import instances as cli_instances
from corral.cli import main as cli_main
from corral.cli import sshkey
from corral.controller.service import Controller
from corral.images.store import ImageStore
from corral.node.fake import FakeNode
from corral.store import Store
from tests.harness import free_port
from tests.unit.helpers import add_image


@dataclass
class Served:
    url: str
    key_id: str
    secret: str
    ctrl: Controller
    loop: asyncio.AbstractEventLoop


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The unit app on its own thread and event loop, listening on 127.0.0.1."""
    tmp = tmp_path_factory.mktemp("cli")
    state = tmp / "state"
    state.mkdir()
    Store(f"sqlite+aiosqlite:///{state / 'corral.db'}").migrate()
    port = free_port()
    ready = threading.Event()
    box: dict[str, object] = {}

    async def main() -> None:
        settings = config.load(state, reconcile_interval=3600, api_port=port)
        store = Store(settings.database_url)
        images = ImageStore(tmp / "images")
        add_image(images, tmp / "parts")
        ctrl = Controller(settings, store, images)
        await ctrl.add_node(FakeNode(), "n1")
        await ctrl.start()
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(ApiContext(settings, ctrl)),
                host="127.0.0.1",
                port=port,
                lifespan="off",
                log_level="warning",
            )
        )
        box.update(server=server, ctrl=ctrl, loop=asyncio.get_running_loop())
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.05)
        ready.set()
        await serving
        await ctrl.close()
        await store.close()

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    assert ready.wait(60), "the unit app did not start"
    creds = json.loads((state / "admin.credentials").read_text())
    try:
        yield Served(
            f"http://127.0.0.1:{port}",
            creds["access_key_id"],
            creds["secret_access_key"],
            box["ctrl"],  # type: ignore[arg-type]
            box["loop"],  # type: ignore[arg-type]
        )
    finally:
        box["server"].should_exit = True  # type: ignore[attr-defined]
        thread.join(30)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def cli(served: Served, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[object]:
    monkeypatch.setenv("CORRAL_ENDPOINT", served.url)
    monkeypatch.setenv("CORRAL_ACCESS_KEY", served.key_id)
    monkeypatch.setenv("CORRAL_SECRET_KEY", served.secret)
    monkeypatch.setattr(sshkey, "KEY", tmp_path / "id_ed25519")
    monkeypatch.chdir(tmp_path)
    yield None


def corral(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run the CLI in this process; its exit status and what it printed (both streams)."""
    argv = sys.argv
    sys.argv = ["corral", *args]
    code = 0
    try:
        cli_main.main()
    except SystemExit as err:
        code = int(err.code or 0)
    finally:
        sys.argv = argv
    out = capsys.readouterr()
    return code, " ".join((out.out + out.err).split())


def _instances(served: Served) -> list[str]:
    with httpx.Client(
        base_url=served.url, headers={"Authorization": f"Bearer {served.key_id}:{served.secret}"}
    ) as c:
        return [i["name"] for i in c.get("/v1/instances").json() if i["state"] != "terminated"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--cpus", "0"], "cpus (--cpus): Input should be greater than or equal to 1"),
        (["--cpus", "1000"], "cpus (--cpus): Input should be less than or equal to 64"),
        (["--restart", "sometimes"], "restart_policy (--restart): Input should be 'always'"),
        (["--net-limit", "-1"], "net_limit_mbit (--net-limit): Input should be greater than 0"),
        (["--disk", "99999T"], "disk (--disk): disk '99999T' is not a disk size Corral makes"),
        # checked by the server (the controller knows the limits): its 400 names the field
        (
            ["--memory", "lots"],
            "memory 'lots' is not a size; write it like 256M, 1G or 512MiB [memory]",
        ),
    ],
)
def test_run_with_bad_input_names_the_option_and_the_fix(
    cli: object, served: Served, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    before = _instances(served)
    code, out = corral(capsys, "run", "tiny", "--name", "bad", *args)
    assert code == 1
    assert expected in out, out
    assert "pydantic" not in out and "http" not in out and "Traceback" not in out
    assert _instances(served) == before  # nothing was made


def test_stop_with_a_negative_timeout_is_an_error_not_a_traceback(
    cli: object, served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = corral(capsys, "run", "tiny", "--name", "web1")
    assert code == 0, out
    code, out = corral(capsys, "stop", "web1", "--timeout", "-1")
    assert code == 1
    assert "timeout (--timeout): Input should be greater than or equal to 0" in out, out
    assert "Traceback" not in out and "pydantic" not in out
    code, out = corral(capsys, "show", "web1", "--json")
    assert json.loads(out)["state"] == "running"


def test_migrate_with_bad_input_or_nowhere_to_go_is_a_clear_error(
    cli: object, served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = corral(capsys, "run", "tiny", "--name", "mover1")
    assert code == 0, out
    code, out = corral(capsys, "migrate", "mover1", "--timeout", "-5")
    assert code == 1
    assert "timeout (--timeout): Input should be greater than 0" in out, out
    code, out = corral(capsys, "migrate", "mover1")
    assert code == 1
    assert "no other node can take mover1" in out, out
    code, out = corral(capsys, "migrate", "mover1", "--to", "elsewhere")
    assert code == 1 and "node elsewhere does not exist" in out, out
    assert "Traceback" not in out


def test_disk_over_the_limit_is_refused_by_the_api_too(served: Served) -> None:
    with httpx.Client(
        base_url=served.url, headers={"Authorization": f"Bearer {served.key_id}:{served.secret}"}
    ) as c:
        resp = c.post("/v1/instances", json={"image": "tiny", "disk": "99999T"})
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["field"] == "disk" and "16T" in err["message"]
    assert "/" not in err["message"].replace("16T", "")  # no host paths, no qemu-img output


def test_key_name_is_a_key_pair_even_when_a_local_file_has_that_name(
    cli: object, served: Served, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    secret = tmp_path / "deploy"
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot for the server\n")
    assert cli_instances._keys(["deploy"]) == (["deploy"], [])
    code, out = corral(capsys, "run", "tiny", "--name", "web2", "--key", "deploy")
    assert code == 1
    assert "key pair deploy does not exist" in out, out
    assert "./deploy" in out  # how to send a file instead
    code, out = corral(capsys, "key", "create", "deploy", "--out", str(tmp_path / "deploy.key"))
    assert code == 0, out
    code, out = corral(capsys, "run", "tiny", "--name", "web2", "--key", "deploy")
    assert code == 0, out
    code, out = corral(capsys, "show", "web2", "--json")
    assert json.loads(out)["key_name"] == "deploy"


def test_key_given_as_a_path_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "me.pub").write_text("ssh-ed25519 AAAA me\n")
    (tmp_path / "plain").write_text("ssh-ed25519 BBBB plain\n")
    assert cli_instances._keys(["me.pub", "./plain"]) == (
        [],
        ["ssh-ed25519 AAAA me", "ssh-ed25519 BBBB plain"],
    )


def test_rebalance_shows_its_plan_and_refuses_a_bad_bound(
    cli: object, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = corral(capsys, "rebalance", "--dry-run")
    assert code == 0, out
    # one node: nothing to even out (its instances fail the N+1 check, with nowhere to go)
    before, after = re.search(r"score (\S+) -> (\S+)", out).groups()  # type: ignore[union-attr]
    assert before == after and "no move would make the cluster more even" in out
    assert "after: n1" in out
    code, out = corral(capsys, "rebalance", "--max-moves", "0")
    assert code != 0 and "--max-moves" in out
