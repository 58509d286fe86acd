from __future__ import annotations

from pathlib import Path

import pytest

from inferclub.hub.config import (
    ConfigError,
    Settings,
    load_or_create_secrets,
    load_settings,
    setting_names,
)


def test_precedence_is_flags_then_env_then_file(tmp_path: Path) -> None:
    cfg = tmp_path / "hub.yaml"
    cfg.write_text("port: 9000\nonline_window: 10\nidle_timeout: 7\n")
    env = {"INFERCLUB_PORT": "9100", "INFERCLUB_ONLINE_WINDOW": "20"}
    s = load_settings({"config": str(cfg), "port": 9200}, env=env)
    assert (s.port, s.online_window, s.idle_timeout) == (9200, 20.0, 7.0)
    assert load_settings({}, env={}).port == Settings().port


def test_config_file_from_env(tmp_path: Path) -> None:
    cfg = tmp_path / "hub.yaml"
    cfg.write_text("db: /tmp/x.db\n")
    assert load_settings({}, env={"INFERCLUB_CONFIG": str(cfg)}).db_path == Path("/tmp/x.db")


def test_every_setting_has_an_env_var() -> None:
    for name in setting_names():
        value = "3" if name not in ("host", "db", "secrets_file", "log_level") else "x"
        s = load_settings({}, env={f"INFERCLUB_{name.upper()}": value})
        assert str(getattr(s, name)) in ("3", "3.0", "x")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("port: [1\n", "invalid YAML"),
        ("- 1\n", "expected a mapping"),
        ("nope: 1\n", "unknown setting 'nope'"),
        ("port: eighty\n", "setting 'port' has an invalid value"),
    ],
)
def test_bad_config_files_name_the_file_and_setting(
    tmp_path: Path, text: str, message: str
) -> None:
    cfg = tmp_path / "hub.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_settings({"config": str(cfg)}, env={})
    assert str(cfg) in str(exc.value) and message in str(exc.value)


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"\$INFERCLUB_IDLE_TIMEOUT"):
        load_settings({}, env={"INFERCLUB_IDLE_TIMEOUT": "soon"})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_REQUESTS_PER_SECOND_PER_USER", "-1"),
        ("MAX_REQUESTS_PER_SECOND_PER_USER", "inf"),
        ("MAX_REQUESTS_PER_SECOND_PER_USER", "1e-320"),  # 1 / rate is no number
        ("MAX_REQUESTS_PER_SECOND_PER_USER", "2e9"),
        ("REQUEST_BURST_PER_USER", "0"),
        ("REQUEST_BURST_PER_USER", "-5"),
    ],
)
def test_request_rate_settings_out_of_range_stop_the_hub(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"setting '{name.lower()}' is"):
        load_settings({}, env={f"INFERCLUB_{name}": value})


@pytest.mark.parametrize("nan", ["nan", "NaN", "-nan"])
def test_nan_is_no_number_for_a_setting(nan: str) -> None:
    """NaN compares false with everything: a limit set to it would silently be no limit."""
    with pytest.raises(ConfigError, match=r"MAX_REQUESTS_PER_SECOND_PER_USER.*invalid value"):
        load_settings({}, env={"INFERCLUB_MAX_REQUESTS_PER_SECOND_PER_USER": nan})


def test_secrets_file_is_private_and_stable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("INFERCLUB_PEPPER", raising=False)
    path = tmp_path / "hub.db.secrets.json"
    first = load_or_create_secrets(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_secrets(path) == first
    assert len(first.pepper) == 32  # 256 bits
