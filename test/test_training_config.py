"""Config precedence of cmcnn-train: dataclass defaults < YAML < command-line flags."""

from __future__ import annotations

import pytest

from cmcnn_training.config import ConfigError, TrainConfig, build_config, load_yaml, resolve_config_path
from cmcnn_training.train import get_args_parser


def _cfg(argv):
    return build_config(get_args_parser().parse_args(argv))


def test_defaults_are_the_paper_protocol():
    cfg = _cfg([])
    assert (cfg.folds, cfg.epochs, cfg.lr, cfg.momentum, cfg.weight_decay) == (10, 300, 0.01, 0.9, 5e-4)
    assert (cfg.lr_step, cfg.lr_gamma, cfg.loss) == (100, 0.5, "soft_focal")
    assert (cfg.focal_alpha, cfg.focal_gamma, cfg.soft_sigma) == (1.0, 2.0, 0.1)


def test_yaml_overrides_defaults_and_cli_overrides_yaml(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("epochs: 7\nlr: 0.05\nbatch_size: 8\nmodel: {dropout: 0.1, attention: softmax}\n"
                 "preprocessing: {crop_size: 64}\nfinal: true\n")
    cfg = _cfg(["--config", str(y), "--lr", "0.2", "--model", "dropout=0.3", "--no-final",
                "--modalities", "grey", "depth"])
    assert cfg.epochs == 7                 # YAML over default
    assert cfg.batch_size == 8             # YAML over default
    assert cfg.lr == 0.2                   # CLI over YAML
    assert cfg.final is False              # CLI over YAML
    assert cfg.model == {"dropout": 0.3, "attention": "softmax"}  # merged key by key
    assert cfg.preprocessing == {"crop_size": 64}
    assert cfg.modalities == ["grey", "depth"]
    assert cfg.momentum == 0.9             # untouched default


def test_presets_resolve_and_load():
    for name in ("default", "quick", "synthetic"):
        data = load_yaml(resolve_config_path(name))
        TrainConfig(**{**TrainConfig().to_dict(), **data, "root": "x"}).validate()
    assert _cfg(["--config", "quick"]).model_preset == "tiny"


def test_bad_config_errors_name_the_key(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text("epocs: 3\n")
    with pytest.raises(ConfigError, match="epocs"):
        _cfg(["--config", str(y)])
    y.write_text("epochs: many\n")
    with pytest.raises(ConfigError, match="epochs"):
        _cfg(["--config", str(y)])
    with pytest.raises(ConfigError, match="neither a file nor a preset"):
        _cfg(["--config", "no_such_preset"])
    with pytest.raises(ConfigError, match="root"):
        _cfg([]).validate()
    with pytest.raises(ConfigError, match="folds=1"):
        _cfg(["--root", "x", "--folds", "5", "--holdout-fraction", "0.2"]).validate()
