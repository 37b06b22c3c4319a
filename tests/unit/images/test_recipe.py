"""Recipe files: what loads, and the error (naming the key) for what does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.errors import Code, Invalid, NotFound
from corral.images import recipe

DEBIAN = """
name = "web"
version = "2"
kind = "debian"
base = "debian:12"
packages = ["nginx-light"]
first_boot = "first-boot.sh"

[files]
"/etc/nginx/sites-enabled/default" = "site.conf"
"/srv/www" = "www"
"""


def _write(d: Path, text: str, **files: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "recipe.toml").write_text(text)
    for name, content in files.items():
        p = d / name.replace("__", "/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
    return d


def _web(tmp_path: Path) -> Path:
    return _write(
        tmp_path / "web",
        DEBIAN,
        **{
            "first-boot.sh": "#!/bin/sh\n",
            "site.conf": "server {}\n",
            "www__index.html": "<p>hi</p>\n",
        },
    )


def test_builtin_recipes_load_and_are_listed() -> None:
    assert {"tiny", "debian"} <= set(recipe.builtin_names())
    tiny, debian = recipe.load("tiny"), recipe.load("debian")
    assert (tiny.kind, debian.kind) == ("busybox", "debian")
    assert debian.default_user == "debian" and debian.base is None
    assert {"openssh-server", "cloud-init", "cloud-guest-utils"} <= set(debian.packages)
    assert {"virtio_blk", "virtio_net", "virtio_pci"} <= set(debian.modules)
    assert "root=/dev/vda1" in debian.cmdline
    assert debian.disk_size == 2 << 30


def test_a_recipe_with_packages_files_and_a_first_boot_script_loads(tmp_path: Path) -> None:
    r = recipe.load(_web(tmp_path))
    assert (r.name, r.version, r.base) == ("web", "2", "debian:12")
    assert r.files["/srv/www"] == "www"
    names = [str(p.relative_to(r.directory)) for p in r.inputs()]  # type: ignore[arg-type]
    assert names[0] == "recipe.toml"
    assert {"first-boot.sh", "site.conf", "www/index.html"} <= set(names)


def test_a_recipe_loads_from_its_directory_or_its_file(tmp_path: Path) -> None:
    d = _web(tmp_path)
    assert recipe.load(d).content_hash() == recipe.load(d / "recipe.toml").content_hash()


def test_content_hash_follows_the_files_the_recipe_uses_and_nothing_else(tmp_path: Path) -> None:
    d = _web(tmp_path)
    first = recipe.load(d).content_hash()
    (d / "notes.txt").write_text("not used by the recipe")
    assert recipe.load(d).content_hash() == first
    (d / "www" / "index.html").write_text("<p>changed</p>\n")
    assert recipe.load(d).content_hash() != first


def test_content_hash_follows_file_modes(tmp_path: Path) -> None:
    d = _web(tmp_path)
    first = recipe.load(d).content_hash()
    (d / "first-boot.sh").chmod(0o755)
    assert recipe.load(d).content_hash() != first


def test_an_unknown_key_is_invalid_and_named(tmp_path: Path) -> None:
    d = _write(tmp_path / "r", 'name = "x"\nkind = "debian"\npackges = ["vim"]\n')
    with pytest.raises(Invalid) as info:
        recipe.load(d)
    assert info.value.field == "packges"
    assert "not a recipe key" in info.value.message


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('name = "x"\nkind = "gentoo"\n', "kind"),
        ('name = "Bad Name"\nkind = "debian"\n', "name"),
        ('name = "x"\nkind = "debian"\npackages = ["rm -rf /"]\n', "packages"),
        ('name = "x"\nkind = "debian"\nroot_disk_size = "1M"\n', "root_disk_size"),
        ('name = "x"\nkind = "debian"\nroot_disk_size = "lots"\n', "root_disk_size"),
        ('name = "x"\nkind = "debian"\n[files]\n"etc/motd" = "motd"\n', "files"),
        ('name = "x"\nkind = "debian"\n[files]\n"/etc/../../motd" = "motd"\n', "files"),
        ('kind = "debian"\n', "name"),
    ],
)
def test_bad_values_are_invalid_and_name_the_key(tmp_path: Path, text: str, field: str) -> None:
    d = _write(tmp_path / "r", text)
    with pytest.raises(Invalid) as info:
        recipe.load(d)
    assert info.value.code == Code.INVALID
    assert info.value.field is not None and info.value.field.startswith(field)


def test_a_file_the_recipe_names_must_exist(tmp_path: Path) -> None:
    d = _write(tmp_path / "r", 'name = "x"\nkind = "debian"\n[files]\n"/etc/motd" = "motd"\n')
    with pytest.raises(Invalid) as info:
        recipe.load(d)
    assert info.value.field == "files./etc/motd"
    assert "does not exist" in info.value.message


def test_a_file_outside_the_recipe_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("no")
    d = _write(tmp_path / "r", 'name = "x"\nkind = "debian"\n[files]\n"/etc/x" = "../secret"\n')
    with pytest.raises(Invalid) as info:
        recipe.load(d)
    assert "outside" in info.value.message


def test_a_missing_first_boot_script_is_named(tmp_path: Path) -> None:
    d = _write(tmp_path / "r", 'name = "x"\nkind = "debian"\nfirst_boot = "fb.sh"\n')
    with pytest.raises(Invalid) as info:
        recipe.load(d)
    assert info.value.field == "first_boot"


def test_busybox_recipes_cannot_have_a_base(tmp_path: Path) -> None:
    d = _write(tmp_path / "r", 'name = "x"\nkind = "busybox"\nbase = "tiny"\n')
    with pytest.raises(Invalid) as info:
        recipe.load(d)
    assert info.value.field == "base"


def test_broken_toml_is_invalid(tmp_path: Path) -> None:
    d = _write(tmp_path / "r", 'name = "x\n')
    with pytest.raises(Invalid) as info:
        recipe.load(d)
    assert "not valid TOML" in info.value.message


def test_directory_is_not_a_recipe_key(tmp_path: Path) -> None:
    d = _write(tmp_path / "r", 'name = "x"\nkind = "debian"\ndirectory = "/etc"\n')
    with pytest.raises(Invalid) as info:
        recipe.load(d)
    assert info.value.field == "directory"


def test_an_unknown_recipe_is_not_found_and_lists_the_built_in_ones(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as info:
        recipe.load(tmp_path / "nope")
    assert "tiny" in info.value.message and "debian" in info.value.message
    assert info.value.field == "recipe"


def test_fields_a_recipe_sets_are_known_apart_from_defaults(tmp_path: Path) -> None:
    # a recipe built on a base keeps the base's command line unless it sets its own
    r = recipe.load(_web(tmp_path))
    assert "cmdline" not in r.model_fields_set and "packages" in r.model_fields_set
