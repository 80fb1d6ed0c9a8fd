"""Typed experiment configs: defaults, the shipped YAMLs, --set parsing and loud validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from charlstm.config import (
    Config,
    ModelConfig,
    apply_overrides,
    config_paths,
    flatten,
    from_dict,
    load_config,
    parse_set_args,
    parse_value,
    to_dict,
)
from charlstm.errors import CharlstmError, ConfigError
from tests.conftest import EXPERIMENTS


def write_yaml(text: str, name: str = "exp.yaml") -> Path:
    path = Path(name)
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# Defaults and the shipped experiments


def test_defaults_equal_the_seed_notebook():
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.model.embedding_dim == 48
    assert cfg.model.hidden_size == 96
    assert cfg.model.num_layers == 1
    assert cfg.data.batch_size == 36
    assert cfg.data.seq_length == 48


@pytest.mark.parametrize("name", ["baseline", "smoke", "large"])
def test_shipped_experiments_load(name):
    cfg = load_config(EXPERIMENTS / f"{name}.yaml")
    assert isinstance(cfg, Config)
    assert cfg.name == name


def test_baseline_yaml_is_the_seed():
    cfg = load_config(EXPERIMENTS / "baseline.yaml")
    assert (cfg.model.embedding_dim, cfg.model.hidden_size) == (48, 96)
    assert (cfg.data.batch_size, cfg.data.seq_length) == (36, 48)
    assert cfg.train.max_seconds == 300.0
    assert isinstance(cfg.train.max_seconds, float)  # int in YAML, coerced to the float field


def test_smoke_and_large_yaml_values():
    smoke = load_config(EXPERIMENTS / "smoke.yaml")
    assert smoke.model.hidden_size == 16
    assert smoke.train.max_seconds is None
    assert smoke.train.max_steps == 40
    large = load_config(EXPERIMENTS / "large.yaml")
    assert large.model.hidden_size == 512
    assert large.model.dropout == pytest.approx(0.1)
    assert large.train.lr == pytest.approx(2e-3)


def test_name_defaults_to_the_file_stem():
    path = write_yaml("model:\n  hidden_size: 32\n", "my_run.yaml")
    assert load_config(path).name == "my_run"


def test_configs_are_frozen():
    cfg = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.hidden_size = 128  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model = ModelConfig()  # type: ignore[misc]
    assert cfg.model.hidden_size == 96


# ---------------------------------------------------------------------------------------------
# Dotted names, --set and overrides


def test_flatten_gives_dotted_keys():
    cfg = load_config(EXPERIMENTS / "smoke.yaml")
    flat = flatten(cfg)
    assert flat["model.hidden_size"] == 16
    assert flat["data.batch_size"] == 4
    assert flat["train.max_seconds"] is None
    assert flat["name"] == "smoke"
    assert list(flat) == config_paths()
    assert all(not isinstance(v, dict) for v in flat.values())


def test_to_dict_round_trips_through_from_dict():
    cfg = load_config(EXPERIMENTS / "large.yaml")
    assert from_dict(to_dict(cfg)) == cfg


def test_parse_set_args_reads_values_as_yaml():
    parsed = parse_set_args(
        [
            "train.lr=3e-3",
            "train.max_seconds=null",
            "model.hidden_size=128",
            "tracking.enabled=false",
            "data.batching=random",
            " train.device = cpu ",
        ]
    )
    assert parsed["train.lr"] == "3e-3"  # as PyYAML reads it; the float field takes it:
    assert load_config(None, {"train.lr": parsed["train.lr"]}).train.lr == 0.003
    assert parsed["train.max_seconds"] is None
    assert parsed["model.hidden_size"] == 128
    assert isinstance(parsed["model.hidden_size"], int)
    assert parsed["tracking.enabled"] is False
    assert parsed["data.batching"] == "random"
    assert parsed["train.device"] == "cpu"


def test_parse_set_args_splits_on_the_first_equals_only():
    assert parse_set_args(["train.out_dir=a=b"]) == {"train.out_dir": "a=b"}
    assert parse_set_args(None) == {}


def test_parse_set_args_without_equals_raises():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set_args(["train.lr"])


def test_parse_value_numbers():
    assert parse_value("1e-4") == "1e-4"  # YAML 1.1; float fields convert it (below)
    assert load_config(None, {"train.lr": parse_value("1e-4")}).train.lr == pytest.approx(1e-4)
    assert parse_value("2.0e-3") == pytest.approx(2e-3)
    assert parse_value("7") == 7


def test_apply_overrides_sets_nested_values_without_mutating_input():
    raw = {"name": "x", "model": {"hidden_size": 32, "embedding_dim": 8}}
    out = apply_overrides(raw, {"model.hidden_size": 64, "train.lr": 0.01, "name": "y"})
    assert out == {
        "name": "y",
        "model": {"hidden_size": 64, "embedding_dim": 8},
        "train": {"lr": 0.01},
    }
    assert raw == {"name": "x", "model": {"hidden_size": 32, "embedding_dim": 8}}


def test_load_config_applies_overrides_on_top_of_yaml():
    cfg = load_config(
        EXPERIMENTS / "smoke.yaml",
        parse_set_args(["model.hidden_size=24", "train.lr=1e-2", "train.max_steps=null",
                        "train.max_chars=5000"]),
    )
    assert cfg.model.hidden_size == 24
    assert cfg.model.embedding_dim == 8  # untouched YAML value kept
    assert cfg.train.lr == pytest.approx(0.01)
    assert cfg.train.max_steps is None
    assert cfg.train.max_chars == 5000


# ---------------------------------------------------------------------------------------------
# Errors: one ConfigError naming the problem


def test_config_error_is_a_charlstm_error():
    assert issubclass(ConfigError, CharlstmError)


def test_missing_config_file():
    with pytest.raises(ConfigError, match=r"nope.yaml: no such file, nor one of charlstm's experiments \(baseline, "):
        load_config("nope.yaml")
    with pytest.raises(ConfigError, match="elsewhere/nope.yaml: no such config file"):
        load_config("elsewhere/nope.yaml")  # a path into another folder is taken as given


def test_shipped_experiments_and_studies_resolve_by_name_from_any_directory(tmp_path, monkeypatch):
    from charlstm.sweep.spec import load_sweep

    monkeypatch.chdir(tmp_path)
    for name in ("baseline", "baseline.yaml", "experiments/baseline.yaml"):
        assert load_config(name).name == "baseline"
    spec = load_sweep("default")
    assert spec.study == "default" and Path(spec.base).name == "baseline.yaml"
    assert load_sweep("sweeps/default.yaml").study == "default"
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "baseline.yaml").write_text("name: ours\n")  # the project's own wins
    assert load_config("baseline").name == "ours"
    (tmp_path / "baseline.yaml").write_text("name: mine\n")  # and a file of the name right here first
    assert load_config("baseline").name == load_config("baseline.yaml").name == "mine"


def test_malformed_yaml_names_the_line():
    path = write_yaml("name: x\nmodel:\n  hidden_size: 96\n embedding_dim: 48\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "malformed YAML" in msg
    assert "line 4" in msg
    assert str(path) in msg


def test_top_level_must_be_a_mapping():
    path = write_yaml("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_unknown_top_level_key():
    path = write_yaml("modle:\n  hidden_size: 96\n")
    with pytest.raises(ConfigError, match="unknown key 'modle'"):
        load_config(path)


def test_unknown_section_key():
    path = write_yaml("model:\n  hiden_size: 96\n")
    with pytest.raises(ConfigError, match=r"model\.hiden_size"):
        load_config(path)


def test_section_must_be_a_mapping():
    with pytest.raises(ConfigError, match="model: expected a mapping"):
        from_dict({"model": 3})


def test_wrong_type():
    path = write_yaml('model:\n  hidden_size: "big"\n')
    with pytest.raises(ConfigError, match=r"model\.hidden_size: expected an integer, got 'big'"):
        load_config(path)


def test_float_for_int_is_rejected():
    with pytest.raises(ConfigError, match=r"data\.batch_size: expected an integer"):
        from_dict({"data": {"batch_size": 3.5}})


def test_bool_given_for_int():
    path = write_yaml("model:\n  hidden_size: true\n")
    with pytest.raises(ConfigError, match=r"model\.hidden_size: expected an integer, got True"):
        load_config(path)


def test_bool_given_for_optional_int():
    with pytest.raises(ConfigError, match=r"train\.max_steps"):
        from_dict({"train": {"max_steps": True}})


def test_string_given_for_bool():
    with pytest.raises(ConfigError, match=r"tracking\.enabled: expected true/false"):
        from_dict({"tracking": {"enabled": "yes please"}})


@pytest.mark.parametrize(
    "key", ["model.hidden_size", "data.batch_size", "data.seq_length", "model.embedding_dim"]
)
@pytest.mark.parametrize("value", [0, -3])
def test_sizes_must_be_positive(key, value):
    with pytest.raises(ConfigError, match=rf"{key} must be > 0, got {value}"):
        load_config(None, {key: value})


def test_unknown_set_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.hiden_size'"):
        load_config(None, parse_set_args(["model.hiden_size=64"]))


def test_invalid_literal():
    path = write_yaml("data:\n  batching: shuffled\n")
    with pytest.raises(ConfigError, match=r"data\.batching: 'shuffled' is not one of stream, random"):
        load_config(path)


def test_no_budget_at_all():
    path = write_yaml("train:\n  max_seconds: null\n")
    with pytest.raises(ConfigError, match="budget"):
        load_config(path)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5, -0.1])
def test_val_fraction_out_of_range(fraction):
    with pytest.raises(ConfigError, match=r"data\.val_fraction must be in \(0, 1\)"):
        load_config(None, {"data.val_fraction": fraction})


def test_val_plus_test_fraction_must_leave_training_data():
    with pytest.raises(ConfigError, match=r"data\.test_fraction"):
        load_config(None, {"data.val_fraction": 0.5, "data.test_fraction": 0.5})


def test_dropout_out_of_range():
    with pytest.raises(ConfigError, match=r"model\.dropout"):
        load_config(None, {"model.dropout": 1.0})


def test_bad_device():
    with pytest.raises(ConfigError, match=r"train\.device"):
        load_config(None, {"train.device": "tpu"})
    assert load_config(None, {"train.device": "cuda:1"}).train.device == "cuda:1"


def test_error_from_a_file_names_the_file():
    path = write_yaml("model:\n  hidden_size: 0\n", "zero.yaml")
    with pytest.raises(ConfigError, match=r"zero\.yaml: model\.hidden_size must be > 0"):
        load_config(path)


# ---------------------------------------------------------------------------------------------
# Regressions: bugs found while writing these tests


def test_nan_learning_rate_is_rejected():
    with pytest.raises(ConfigError, match=r"train\.lr"):
        load_config(None, parse_set_args(["train.lr=nan"]))


def test_set_accepts_what_yaml_accepts_for_string_fields():
    path = write_yaml("tracking:\n  experiment: 1e3\n")
    from_yaml = load_config(path).tracking.experiment
    assert from_yaml == "1e3"
    from_set = load_config(None, parse_set_args(["tracking.experiment=1e3"])).tracking.experiment
    assert from_set == from_yaml
