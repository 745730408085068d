"""Config: defaults < file < key=value; unknown keys and bad values are one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from sbssl.config import CONFIG_DIR, load_config
from sbssl.errors import ConfigError

from .conftest import assert_user_error, run_cli


def test_defaults_file_and_overrides(tmp_path: Path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  name: vit_tiny\ntrain:\n  epochs: 7\n")
    cfg = load_config(str(f), ["train.epochs=3", "mask.type=zeros,noise", "data.plane=coronal"])
    assert cfg.model.name == "vit_tiny" and cfg.train.epochs == 3 and cfg.data.plane == "coronal"
    assert cfg.mask.max_ratio == 0.7 and cfg.model.skip_blocks == [6, 8, 10, 12]


@pytest.mark.parametrize("name", sorted(str(p.relative_to(CONFIG_DIR)) for p in CONFIG_DIR.rglob("*.yaml")))
def test_every_shipped_recipe_loads(name: str):
    cfg = load_config(name)
    assert cfg.data.img_size % cfg.model.patch_size == 0


@pytest.mark.parametrize("override,needle", [
    ("train.epochz=3", "epochz"),
    ("train.epochs=many", "train.epochs"),
    ("data.plane=oblique", "data.plane"),
    ("mask.type=glitter", "mask.type"),
    ("mask.max_ratio=1.5", "mask.max_ratio"),
    ("model.patch_size=7", "model.patch_size"),
    ("model.depth=-1", "model.depth"),
    ("nonsense", "key=value"),
])
def test_bad_overrides(override: str, needle: str):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(None, [override])


def test_cli_config_errors_are_one_line(tmp_path: Path):
    assert_user_error(run_cli("pretrain", "--data", tmp_path, "--out", tmp_path / "o", "train.lr=-1"), "train.lr")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    assert_user_error(run_cli("pretrain", "--config", bad, "--data", tmp_path, "--out", tmp_path / "o"), "bad.yaml")
    assert_user_error(run_cli("pretrain", "--config", tmp_path / "none.yaml", "--data", tmp_path), "none.yaml",
                      "not found")
