"""config.load_config: defaults < TOML table < LLUMNIX_<FIELD> env < command-line flags."""

from __future__ import annotations

import argparse
import dataclasses
import os

import pytest

from llumnix_zmq.config import (
    SECTIONS,
    FrontendConfig,
    SchedulerConfig,
    WorkerConfig,
    add_flags,
    load_config,
    parse_args,
)

TOML = """
[scheduler]
heartbeat_timeout_s = 2.5
dispatch_policy = "infaas++"
enable_migration = false
max_migrations_per_pair = 3
seed = 11

[frontend]
port = 9001
api_keys = ["k1", "k2"]
admin_key = "toml-admin"

[worker]
block_size = 32
"""


def flags(section: str, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_flags(parser, SECTIONS[section])
    return parser.parse_args(argv)


def test_defaults_with_nothing_set():
    for name, cls in SECTIONS.items():
        assert load_config(name, None, env={}) == cls()
    assert load_config("scheduler", flags("scheduler", []), env={}) == SchedulerConfig()


def test_toml_table_overrides_defaults_and_other_tables_are_ignored():
    cfg = load_config("scheduler", None, env={}, toml_text=TOML)
    assert cfg == dataclasses.replace(SchedulerConfig(), heartbeat_timeout_s=2.5,
                                      dispatch_policy="infaas++", enable_migration=False,
                                      max_migrations_per_pair=3, seed=11)
    assert load_config("worker", None, env={}, toml_text=TOML) == WorkerConfig(block_size=32)
    fe = load_config("frontend", None, env={}, toml_text=TOML)
    assert fe == FrontendConfig(port=9001, api_keys=["k1", "k2"], admin_key="toml-admin")


def test_toml_from_config_flag(tmp_path):
    path = tmp_path / "cluster.toml"
    path.write_text(TOML)
    cfg = load_config("frontend", flags("frontend", ["--config", str(path)]), env={})
    assert (cfg.port, cfg.api_keys, cfg.admin_key) == (9001, ["k1", "k2"], "toml-admin")


def test_toml_int_is_coerced_for_float_fields():
    cfg = load_config("scheduler", None, env={}, toml_text="[scheduler]\nheartbeat_timeout_s = 3\n")
    assert cfg.heartbeat_timeout_s == 3.0
    assert type(cfg.heartbeat_timeout_s) is float


def test_env_overrides_toml():
    env = {"LLUMNIX_HEARTBEAT_TIMEOUT_S": "4.0", "LLUMNIX_ENABLE_MIGRATION": "yes",
           "LLUMNIX_SEED": "12", "LLUMNIX_BIND": "tcp://0.0.0.0:7000"}
    cfg = load_config("scheduler", None, env=env, toml_text=TOML)
    assert cfg.heartbeat_timeout_s == 4.0
    assert cfg.enable_migration is True
    assert cfg.seed == 12
    assert cfg.bind == "tcp://0.0.0.0:7000"
    assert cfg.dispatch_policy == "infaas++"  # from TOML, not overridden
    assert cfg.max_migrations_per_pair == 3


def test_flags_override_env_and_toml():
    env = {"LLUMNIX_HEARTBEAT_TIMEOUT_S": "4.0", "LLUMNIX_SEED": "12",
           "LLUMNIX_ENABLE_MIGRATION": "true"}
    args = flags("scheduler", ["--heartbeat-timeout-s", "5.5", "--no-enable-migration",
                               "--dispatch-policy", "round-robin"])
    cfg = load_config("scheduler", args, env=env, toml_text=TOML)
    assert cfg.heartbeat_timeout_s == 5.5
    assert cfg.enable_migration is False
    assert cfg.dispatch_policy == "round-robin"
    assert cfg.seed == 12  # env wins where no flag is given
    assert cfg.max_migrations_per_pair == 3  # TOML wins where neither is given


@pytest.mark.parametrize(
    "raw,expected",
    [("0", False), ("false", False), ("False", False), ("no", False), ("off", False), ("", False),
     ("1", True), ("true", True), ("TRUE", True), ("yes", True), (" on ", True)],
)
def test_bool_coercion_from_env(raw, expected):
    cfg = load_config("worker", None, env={"LLUMNIX_CHUNKED_PREFILL": raw})
    assert cfg.chunked_prefill is expected


def test_bool_flags_both_ways():
    assert flags("scheduler", ["--no-enable-migration"]).enable_migration is False
    assert flags("scheduler", ["--enable-migration"]).enable_migration is True
    assert flags("scheduler", []).enable_migration is None  # not given: lower layers decide
    env = {"LLUMNIX_ENABLE_MIGRATION": "0"}
    assert load_config("scheduler", flags("scheduler", ["--enable-migration"]), env=env) \
        .enable_migration is True
    assert load_config("scheduler", flags("scheduler", []), env=env).enable_migration is False


def test_list_field_from_comma_separated_env():
    cfg = load_config("frontend", None, env={"LLUMNIX_API_KEYS": "a, b,,c "})
    assert cfg.api_keys == ["a", "b", "c"]
    cfg = load_config("frontend", None, env={"LLUMNIX_API_KEYS": "a"}, toml_text=TOML)
    assert cfg.api_keys == ["a"]  # env replaces the TOML list


def test_list_field_from_repeated_flags():
    args = flags("frontend", ["--api-keys", "x", "--api-keys", "y"])
    assert args.api_keys == ["x", "y"]
    cfg = load_config("frontend", args, env={"LLUMNIX_API_KEYS": "a,b"}, toml_text=TOML)
    assert cfg.api_keys == ["x", "y"]


def test_list_default_is_not_shared():
    a = load_config("frontend", None, env={})
    b = load_config("frontend", None, env={})
    a.api_keys.append("mutated")
    assert b.api_keys == []


def test_typed_flags():
    args = flags("worker", ["--block-size", "64", "--time-scale", "0.5", "--engine", "torch"])
    assert (args.block_size, args.time_scale, args.engine) == (64, 0.5, "torch")
    cfg = load_config("worker", args, env={})
    assert cfg == WorkerConfig(block_size=64, time_scale=0.5, engine="torch")
    with pytest.raises(SystemExit):
        flags("worker", ["--block-size", "big"])


def test_unknown_toml_key_is_an_error():
    with pytest.raises(ValueError) as info:
        load_config("scheduler", None, env={},
                    toml_text="[scheduler]\nheartbeat_timeout = 1\nzzz = 2\n")
    assert str(info.value) == "[scheduler] unknown keys: ['heartbeat_timeout', 'zzz']"


def test_bad_env_value_for_int_is_an_error():
    with pytest.raises(ValueError):
        load_config("worker", None, env={"LLUMNIX_BLOCK_SIZE": "sixteen"})


def test_env_is_only_read_for_prefixed_field_names():
    env = {"BLOCK_SIZE": "99", "LLUMNIX_block_size": "98", "LLUMNIX_BLOCKSIZE": "97"}
    assert load_config("worker", None, env=env).block_size == 16


def test_parse_args_end_to_end(monkeypatch, tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[frontend]\nport = 9100\nmax_tokens_limit = 512\n")
    for key in [k for k in os.environ if k.startswith("LLUMNIX_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("LLUMNIX_MAX_TOKENS_LIMIT", "1024")
    monkeypatch.setenv("LLUMNIX_API_KEYS", "env-key")
    cfg = parse_args("frontend", ["--config", str(path), "--port", "9200"])
    assert cfg == FrontendConfig(port=9200, max_tokens_limit=1024, api_keys=["env-key"])
