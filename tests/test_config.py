"""Config: YAML + `key.sub=value` overrides, typed, with one-line errors naming the key."""
import subprocess
import sys

import pytest
import yaml

from mlm.config import Config, ConfigError, load_config, save_config


def test_defaults_load_without_a_file():
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    assert cfg.collate.mlm_probability == 0.15


def test_yaml_then_overrides_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("output_dir: out\ntrain:\n  max_steps: 5\n  lr: 1.0e-3\n")
    cfg = load_config(path, ["train.max_steps=7", "train.lr=3e-4", "data.train_files=[a.txt, 'b/*.jsonl']"])
    assert cfg.output_dir == "out"
    assert cfg.train.max_steps == 7
    assert cfg.train.lr == pytest.approx(3e-4)  # YAML 1.1 reads 3e-4 as a string; we coerce it
    assert cfg.data.train_files == ["a.txt", "b/*.jsonl"]


def test_single_string_for_a_list_key_becomes_a_list():
    assert load_config(None, ["data.train_files=corpus.txt"]).data.train_files == ["corpus.txt"]


def test_integers_written_in_scientific_notation_are_accepted():
    assert load_config(None, ["train.max_steps=1e4"]).train.max_steps == 10000


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "unknown config key train.lrr; did you mean train.lr?"),
    ("trian.lr=1", "unknown config key trian; did you mean train?"),
    ("train.max_steps=many", "train.max_steps must be an integer, got 'many'"),
    ("train.lr=-1", "train.lr must be positive"),
    ("collate.mlm_probability=1.5", "collate.mlm_probability must be between 0 and 1"),
    ("train.compile=maybe", "train.compile must be true or false"),
    ("model.hidden_size=250", "model.hidden_size (250) must be divisible by model.num_heads (4)"),
    ("train.precision=fp8", "train.precision must be one of auto, fp32, bf16, fp16"),
    ("noequals", "override 'noequals' must look like key.sub=value"),
])
def test_mistakes_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_section_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: 5\n")
    with pytest.raises(ConfigError, match="train must be a mapping"):
        load_config(path)


def test_missing_file_and_bad_yaml_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML at line"):
        load_config(bad)


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_config(None, ["train.max_steps=3", "data.train_files=[x]"])
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg
    assert yaml.safe_load((tmp_path / "resolved.yaml").read_text())["train"]["max_steps"] == 3


def test_shipped_configs_are_valid():
    from pathlib import Path
    for path in sorted(Path(__file__).parent.parent.glob("configs/*.yaml")):
        # other config types, checked in tests/test_finetune.py, test_benchmark.py, test_pretraining_curve.py
        if path.name.startswith(("finetune", "bench", "curve")):
            continue
        load_config(path)


def test_cli_typo_is_one_line_and_nonzero_exit(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mlm.train", "--config", "configs/base.yaml",
                           "train.max_stepz=3", f"output_dir={tmp_path}"],
                          capture_output=True, text=True, cwd=str(__import__("pathlib").Path(__file__).parent.parent))
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: unknown config key train.max_stepz; did you mean train.max_steps?"


def test_cli_missing_config_file(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mlm.train", "--config", str(tmp_path / "none.yaml")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().endswith("none.yaml: config file not found")
