"""Service files: good ones load with their files inline; bad input is refused with an error
naming the field as the file writes it, and what to write instead."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.appliances import render, spec
from corral.errors import Invalid, NotFound

GOOD = """
name = "shop"

[services.web]
image = "tiny"
type = "cr1.micro"
count = 2
run = "httpd -p 80 -h /srv/www"
health = { port = 80, path = "/health" }

[services.web.files]
"/srv/www/health" = { content = "ok\\n" }
"/srv/www/index.html" = { content = "${name}.${domain} (${index}/${count})", template = true }
"/etc/app.conf" = { source = "app.conf", mode = "0600" }

[[services.web.volumes]]
name = "data"
size = "2G"
mount = "/srv/data"

[services.db]
image = "debian:12"
cpus = 2
memory = "1G"
"""


def _parse(text: str, tmp_path: Path) -> spec.ApplianceSpec:
    return spec.parse(text, tmp_path, "shop.toml", "shop")


def test_a_good_service_file_loads_with_its_files_inline(tmp_path: Path) -> None:
    (tmp_path / "app.conf").write_text("listen 80\n")
    (tmp_path / "shop.toml").write_text(GOOD)
    s = spec.load(tmp_path / "shop.toml")
    assert s.name == "shop" and list(s.services) == ["web", "db"]
    web = s.services["web"]
    assert web.files["/etc/app.conf"].content == "listen 80\n"
    assert web.files["/etc/app.conf"].source is None  # nothing left for the server to read
    assert web.volumes[0].gib == 2 and web.health.path == "/health"
    spec.check_inline(s)
    names = [d.name for d in render.desired(s, {"web": "ami-1", "db": "ami-2"}, "c.internal")]
    assert names == ["web-1", "web-2", "db"]


def test_the_appliance_is_named_after_the_file_unless_it_says(tmp_path: Path) -> None:
    (tmp_path / "My Shop.toml").write_text('[services.web]\nimage = "tiny"\n')
    assert spec.load(tmp_path / "My Shop.toml").name == "my-shop"


def test_templates_are_rendered_per_instance(tmp_path: Path) -> None:
    (tmp_path / "app.conf").write_text("x")
    desired = render.desired(_parse(GOOD, tmp_path), {"web": "ami-1", "db": "ami-2"}, "c.internal")
    assert "web-2" in desired[1].user_data and desired[0].config != desired[1].config
    # the same file gives the same user-data and hash (gzip without a time stamp)
    again = render.desired(_parse(GOOD, tmp_path), {"web": "ami-1", "db": "ami-2"}, "c.internal")
    assert [d.config for d in again] == [d.config for d in desired]
    assert [d.user_data for d in again] == [d.user_data for d in desired]


@pytest.mark.parametrize(
    ("text", "field", "says"),
    [
        (
            '[services.web]\nimage = "tiny"\nimgae = "x"\n',
            "services.web.imgae",
            "not a service file key",
        ),
        ('[services.web]\ntype = "cr1.micro"\n', "services.web.image", "missing"),
        ('[services.web]\nimage = "tiny"\ncount = -1\n', "services.web.count", "greater than"),
        ('[services.web]\nimage = "tiny"\nmemory = "lots"\n', "services.web.memory", "not a size"),
        (
            '[services.web]\nimage = "tiny"\ntype = "cr1.micro"\ncpus = 2\n',
            "services.web",
            "not both",
        ),
        (
            '[services.web]\nimage = "tiny"\n[[services.web.volumes]]\nname = "data"\nsize = "1X"\n'
            'mount = "/srv"\n',
            "services.web.volumes[0].size",
            "not a size",
        ),
        (
            '[services.web]\nimage = "tiny"\n[[services.web.volumes]]\nname = "data"\nsize = "1.5G"\n'
            'mount = "/srv"\n',
            "services.web.volumes[0].size",
            "whole GiB",
        ),
        (
            '[services.web]\nimage = "tiny"\n[[services.web.volumes]]\nname = "Data!"\n'
            'mount = "/srv"\n',
            "services.web.volumes[0].name",
            "pattern",
        ),
        (
            '[services.web]\nimage = "tiny"\n[[services.web.volumes]]\nname = "data"\n'
            'mount = "srv"\n',
            "services.web.volumes[0].mount",
            "absolute path",
        ),
        (
            '[services.web]\nimage = "tiny"\n[[services.web.volumes]]\nname = "a"\nmount = "/srv"\n'
            '[[services.web.volumes]]\nname = "b"\nmount = "/srv"\n',
            "services.web",
            "same place",
        ),
        (
            '[services.web]\nimage = "tiny"\n[services.web.files]\n"/etc/x" = {}\n',
            'services.web.files."/etc/x"',
            "exactly one of content or source",
        ),
        (
            '[services.web]\nimage = "tiny"\n[services.web.files]\n"/etc/x" = { content = "x", '
            'mode = "999" }\n',
            'services.web.files."/etc/x".mode',
            "pattern",
        ),
        (
            '[services.web]\nimage = "tiny"\nhealth = { port = 0 }\n',
            "services.web.health.port",
            "greater than",
        ),
        (
            '[services.web]\nimage = "tiny"\nhealth = { port = 80, path = "health" }\n',
            "services.web.health.path",
            "pattern",
        ),
        ('[services.Web]\nimage = "tiny"\n', "services", "lower-case"),
        (
            '[services.web]\nimage = "tiny"\ncount = 2\n[services.web-2]\nimage = "tiny"\n',
            "services",
            "both name an instance web-2",
        ),
        ('name = "My App"\n[services.web]\nimage = "tiny"\n', "name", "pattern"),
        ('[services.web\nimage = "tiny"\n', "file", "not valid TOML"),
    ],
)
def test_bad_input_names_the_field(tmp_path: Path, text: str, field: str, says: str) -> None:
    with pytest.raises(Invalid) as err:
        _parse(text, tmp_path)
    assert err.value.field == field
    assert says in err.value.message and "shop.toml" in err.value.message


def test_a_missing_source_file_names_the_field_and_where_it_looked(tmp_path: Path) -> None:
    text = (
        '[services.web]\nimage = "tiny"\n[services.web.files]\n"/etc/x" = { source = "x.conf" }\n'
    )
    with pytest.raises(NotFound) as err:
        _parse(text, tmp_path)
    assert err.value.field == 'services.web.files."/etc/x".source'
    assert str(tmp_path / "x.conf") in err.value.message


def test_a_template_with_an_unknown_placeholder_is_refused(tmp_path: Path) -> None:
    text = (
        '[services.web]\nimage = "tiny"\n[services.web.files]\n'
        '"/etc/x" = { content = "${nmae}", template = true }\n'
    )
    with pytest.raises(Invalid) as err:
        render.desired(_parse(text, tmp_path), {"web": "ami-1"}, "c.internal")
    assert err.value.field == 'services.web.files."/etc/x".content'
    assert "nmae" in err.value.message and "${name}" in err.value.message


def test_config_beyond_the_user_data_limit_is_refused(tmp_path: Path) -> None:
    import base64
    import os

    noise = base64.b64encode(os.urandom(20000)).decode()  # does not compress
    text = (
        '[services.web]\nimage = "tiny"\n[services.web.files]\n'
        f'"/etc/big" = {{ content = "{noise}" }}\n'
    )
    with pytest.raises(Invalid) as err:
        render.desired(_parse(text, tmp_path), {"web": "ami-1"}, "c.internal")
    assert err.value.field == "services.web.files" and "16 KiB" in err.value.message


def test_the_server_refuses_files_it_cannot_read() -> None:
    s = spec.validate(
        {
            "name": "shop",
            "services": {"web": {"image": "tiny", "files": {"/etc/x": {"source": "x.conf"}}}},
        }
    )
    with pytest.raises(Invalid) as err:
        spec.check_inline(s)
    assert err.value.field == 'services.web.files."/etc/x".source'
