"""params.yaml is the single source of settings; a wrong key or value fails at load, naming the key."""

from pathlib import Path

import pytest
import yaml

from lstmops import config
from lstmops.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_load_into_the_typed_config():
    cfg = config.load(REPO)
    assert cfg.data.target == "demand_gw"
    assert (cfg.window.input_steps, cfg.window.horizon) == (336, 48)
    assert cfg.target_index == cfg.data.features.index("demand_gw")


def test_override_sets_nested_values_parsed_as_yaml():
    cfg = config.load(REPO, ["train.epochs=3", "data.features=[demand_gw, workday]", "train.device=cpu"])
    assert cfg.train.epochs == 3
    assert cfg.data.features == ["demand_gw", "workday"]


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.epoch=3", "train.epoch"),  # typo in a leaf
        ("trian.epochs=3", "trian.epochs"),  # typo in a section
        ("train.epochs=three", "train.epochs"),  # wrong type
        ("train.epochs=0", "train.epochs"),  # out of range
        ("train.device=tpu", "train.device"),  # not a choice
        ("data.target=price", "data"),  # target must be a feature
    ],
)
def test_wrong_key_or_value_fails_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        config.load(REPO, [override])
    assert key in str(err.value)
    assert "\n" not in str(err.value)


def test_override_without_equals_is_rejected():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        config.load(REPO, ["train.epochs"])


def test_seasonal_period_longer_than_the_window_is_rejected():
    with pytest.raises(ConfigError, match="seasonal_periods"):
        config.load(REPO, ["window.input_steps=24"])


def test_write_overrides_keeps_comments_and_validates_first(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    before = (tmp_path / "params.yaml").read_text()
    with pytest.raises(ConfigError):
        config.write_overrides(tmp_path, ["train.epochs=-1"])
    assert (tmp_path / "params.yaml").read_text() == before  # nothing written on a bad value

    config.write_overrides(tmp_path, ["train.epochs=5"])
    text = (tmp_path / "params.yaml").read_text()
    assert yaml.safe_load(text)["train"]["epochs"] == 5
    assert "# Every setting of the pipeline" in text


def test_the_registered_model_is_named_after_the_source_unless_a_name_is_set(tmp_path):
    from lstmops.serve.server import project_model_name

    assert config.load(REPO).model_name == "lstmops-vic-elec"  # the embedded data: existing registries continue
    named = {
        "data/meters/sensor_export_2024-05.csv": "lstmops-sensor-export",
        "s3://bucket/meters/": "lstmops-meters",
        "data/landed": "lstmops-landed",
        "data/parts/*.parquet": "lstmops-parts",
    }
    for source, name in named.items():
        assert config.load(REPO, [f"data.source={source}"]).model_name == name
    assert config.load(REPO, ["data.source=data/x.csv", "mlflow.model_name=mine"]).model_name == "mine"
    # `lstmops serve` in a project serves the champion of the same name.
    (tmp_path / "params.yaml").write_text("data:\n  source: data/my_series.csv\nmlflow:\n  model_name: null\n")
    assert project_model_name(tmp_path) == "lstmops-my-series"


def test_serve_finds_the_model_name_of_any_pipeline_without_its_settings_class():
    from lstmops.serve.server import project_model_name

    assert project_model_name(REPO / "pipelines" / "charlm") == "lstmops-charlm"
    assert project_model_name(REPO / "pipelines" / "long_lag") == "lstmops-long-lag"
    assert project_model_name(REPO) == "lstmops-vic-elec"


def test_section_overrides_give_another_process_exactly_this_runs_settings():
    """What the train stage hands the processes torchrun starts (train.nproc_per_node > 1)."""
    for root in (REPO, *sorted(p.parent for p in (REPO / "pipelines").glob("*/params.yaml"))):
        cfg = config.load(root, ["train.epochs=3", "train.nproc_per_node=2"])
        overrides = config.as_section_overrides(cfg)
        assert not any(o.startswith("task=") for o in overrides)  # fixed by the pipeline's params.yaml
        assert config.load(root, overrides) == cfg, root
