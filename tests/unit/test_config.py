"""Settings: defaults < corral.toml < CORRAL_* environment < explicit overrides; checked once."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral import config
from corral.errors import Code, Invalid


def _toml(state: Path, text: str) -> None:
    state.mkdir(parents=True, exist_ok=True)
    (state / "corral.toml").write_text(text)


def test_defaults(tmp_path: Path) -> None:
    st = config.load(tmp_path)
    assert st.state_dir == tmp_path
    assert (st.subnet, st.accel, st.machine, st.api_port) == ("10.88.0.0/24", "auto", "pc", 8773)
    assert st.database_url == f"sqlite+aiosqlite:///{tmp_path / 'corral.db'}"
    assert st.api_url == "http://127.0.0.1:8773"
    assert st.availability_zone == "corral-1a"
    assert st.images_dir == tmp_path / "images"


def test_file_overrides_defaults(tmp_path: Path) -> None:
    _toml(tmp_path, 'subnet = "10.77.0.0/24"\napi_port = 9000\nstop_timeout = 5\n')
    st = config.load(tmp_path)
    assert (st.subnet, st.api_port, st.stop_timeout) == ("10.77.0.0/24", 9000, 5.0)
    assert isinstance(st.stop_timeout, float)


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _toml(tmp_path, 'subnet = "10.77.0.0/24"\napi_port = 9000\n')
    monkeypatch.setenv("CORRAL_SUBNET", "10.66.0.0/24")
    monkeypatch.setenv("CORRAL_API_PORT", "9100")
    st = config.load(tmp_path)
    assert (st.subnet, st.api_port) == ("10.66.0.0/24", 9100)


def test_empty_environment_variable_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _toml(tmp_path, 'subnet = "10.77.0.0/24"\n')
    monkeypatch.setenv("CORRAL_SUBNET", "")
    assert config.load(tmp_path).subnet == "10.77.0.0/24"


def test_overrides_win_over_environment_and_none_means_not_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _toml(tmp_path, 'accel = "kvm"\n')
    monkeypatch.setenv("CORRAL_SUBNET", "10.66.0.0/24")
    st = config.load(tmp_path, subnet="10.55.0.0/24", accel=None, reconcile_interval="7")
    assert st.subnet == "10.55.0.0/24"
    assert st.accel == "kvm"
    assert st.reconcile_interval == 7.0


def test_state_dir_comes_from_the_environment_when_not_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _toml(tmp_path, 'region = "lab-1"\n')
    monkeypatch.setenv("CORRAL_STATE_DIR", str(tmp_path))
    st = config.load()
    assert st.state_dir == tmp_path
    assert st.region == "lab-1"


def test_unknown_setting_in_the_file_is_invalid_naming_it(tmp_path: Path) -> None:
    _toml(tmp_path, 'colour = "blue"\n')
    with pytest.raises(Invalid) as info:
        config.load(tmp_path)
    assert (info.value.code, info.value.field) == (Code.INVALID, "colour")


def test_file_that_is_not_toml_is_invalid_and_says_fix_or_remove(tmp_path: Path) -> None:
    _toml(tmp_path, "subnet = = nope\n")
    with pytest.raises(Invalid) as info:
        config.load(tmp_path)
    assert info.value.code == Code.INVALID
    assert "corral.toml" in info.value.message and "fix or remove it" in info.value.message


def test_setting_of_the_wrong_type_is_invalid_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_API_PORT", "eighty")
    with pytest.raises(Invalid) as info:
        config.load(tmp_path)
    assert (info.value.code, info.value.field) == (Code.INVALID, "api_port")


@pytest.mark.parametrize(
    "subnet",
    [
        "banana",
        "10.88.0.0/33",
        "10.88.0.1/24",
        "10.88.0.0/30",
        "10.88.0.0/32",
        "fd00::/64",
    ],
)
def test_bad_subnet_is_invalid_naming_subnet(tmp_path: Path, subnet: str) -> None:
    with pytest.raises(Invalid) as info:
        config.load(tmp_path, subnet=subnet)
    assert (info.value.code, info.value.field) == (Code.INVALID, "subnet")
    assert "subnet" in info.value.message


def test_smallest_subnet_with_room_is_accepted(tmp_path: Path) -> None:
    assert config.load(tmp_path, subnet="10.88.0.0/29").subnet == "10.88.0.0/29"


def test_bad_accelerator_is_invalid_naming_accel(tmp_path: Path) -> None:
    with pytest.raises(Invalid) as info:
        config.load(tmp_path, accel="hvf")
    assert (info.value.code, info.value.field) == (Code.INVALID, "accel")
    assert "auto, kvm or tcg" in info.value.message


def test_bad_machine_is_invalid_naming_machine(tmp_path: Path) -> None:
    with pytest.raises(Invalid) as info:
        config.load(tmp_path, machine="microvm-x")
    assert (info.value.code, info.value.field) == (Code.INVALID, "machine")


def test_namespace_is_corral_for_the_default_state_dir() -> None:
    assert config.Settings().namespace == "corral"


def test_namespace_is_derived_from_another_state_dir(tmp_path: Path) -> None:
    one = config.load(tmp_path / "one").namespace
    two = config.load(tmp_path / "two").namespace
    assert one.startswith("corral-") and len(one) == len("corral-") + 8
    assert one != two
    assert config.load(tmp_path / "one").namespace == one  # stable


def test_namespace_setting_wins(tmp_path: Path) -> None:
    assert config.load(tmp_path, netns="lab").namespace == "lab"


def test_database_setting_replaces_the_sqlite_default(tmp_path: Path) -> None:
    url = "postgresql://corral@db/corral"
    assert config.load(tmp_path, db_url=url).database_url == url


def test_a_database_url_corral_does_not_speak_is_invalid_naming_the_setting(
    tmp_path: Path,
) -> None:
    with pytest.raises(Invalid) as info:
        config.load(tmp_path, db_url="mysql://root:hunter2@db/corral")
    assert info.value.field == "db_url"
    assert "postgresql://" in info.value.message
    assert "hunter2" not in info.value.message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("api_port", 70000),
        ("api_port", -1),
        ("reconcile_interval", 0),
        ("reconcile_interval", -5),
        ("stop_timeout", -1),
    ],
)
def test_out_of_range_numbers_are_invalid_naming_the_setting(
    tmp_path: Path, name: str, value: int
) -> None:
    with pytest.raises(Invalid) as info:
        config.load(tmp_path, **{name: value})
    assert info.value.field == name
