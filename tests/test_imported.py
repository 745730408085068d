"""ImageNet transfer without a download (models/imported.py): weights files the tests write themselves from
randomly initialised torchvision and timm models start the classifiers, and bad files are one line each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sbssl.config import load_config
from sbssl.errors import SbsslError
from sbssl.models.build import build_classifier
from sbssl.models.encoder_file import encoder_init

from .conftest import assert_user_error, run_cli

CNN_128 = ["model.name=mrnet_cnn", "data.img_size=128", "init=scratch"]
VIT_64 = ["model.name=vit_tiny", "model.depth=2", "model.patch_size=16", "data.img_size=64", "init=scratch"]


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory) -> Path:
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("imagenet") / "alexnet.pth"
    torch.save(torchvision.models.alexnet().state_dict(), path)
    return path


def test_alexnet_weights_start_the_mrnet_cnn(alexnet_file: Path, tiny_set: Path, tmp_path: Path):
    from sbssl.workflow import finetune

    src = torch.load(alexnet_file, weights_only=True)
    init = encoder_init(str(alexnet_file))
    cfg = init.configure(load_config(None, CNN_128))
    cnn = build_classifier(cfg, init).encoder
    f = cnn.features
    torch.testing.assert_close(f[0].weight, src["features.0.weight"].sum(1, keepdim=True))  # RGB folded to grey
    torch.testing.assert_close(f[1].bias, src["features.0.bias"])  # the conv's bias, after its batch norm
    for ours, theirs in ((4, 3), (8, 6), (11, 8), (14, 10)):
        torch.testing.assert_close(f[ours].weight, src[f"features.{theirs}.weight"])
    out = tmp_path / "ft"
    # a recipe that keeps an encoder's batch-norm statistics (and freezes them) still estimates AlexNet's, which
    # it never had: kept, the identity they start as would normalise nothing
    finetune(load_config("finetune/demo", [*CNN_128, f"init={alexnet_file}", "finetune.ensemble=1",
                                           "finetune.probe_steps=0", "train.epochs=1", "finetune.slices=4",
                                           "finetune.recalibrate_bn=false", "finetune.frozen_bn=true",
                                           "trainer.accelerator=cpu"]), tiny_set, out)
    run = json.loads((out / "run.json").read_text())
    assert run["init"] == f"imported:{alexnet_file}" and run["preprocessing"]["img_size"] == 128
    bn = load_file(out / "model-0.safetensors")
    assert not torch.equal(bn["encoder.features.1.running_mean"], cnn.features[1].running_mean)
    assert not torch.equal(bn["encoder.features.1.running_var"], cnn.features[1].running_var)
    assert (out / "metrics.json").exists()


def test_a_timm_vit_checkpoint_starts_the_vit_on_another_grid(tmp_path: Path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, num_classes=1000)
    sd = vit.state_dict()
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    init = encoder_init(str(path))
    enc = build_classifier(init.configure(load_config(None, VIT_64)), init).encoder
    torch.testing.assert_close(enc.patch_embed.proj.weight, sd["patch_embed.proj.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(enc.blocks[1].mlp.fc2.weight, sd["blocks.1.mlp.fc2.weight"])
    assert enc.pos_embed.shape == (1, 1 + 16, 192)  # 14 x 14 positions resampled to the 4 x 4 grid of 64 px
    torch.testing.assert_close(enc.pos_embed[:, 0], sd["pos_embed"][:, 0])  # the class token's kept


def test_bad_weight_files_are_one_line(alexnet_file: Path, tiny_set: Path, tmp_path: Path):
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(alexnet_file.read_bytes()[:5000])
    foreign = tmp_path / "other.pth"
    torch.save({"w": torch.zeros(3)}, foreign)
    cases = [(tmp_path / "missing.pth", CNN_128, "file not found"),
             (truncated, CNN_128, "not a readable weights file"),
             (foreign, CNN_128, "neither a GMML encoder"),
             (alexnet_file, VIT_64, "alexnet weights cannot start model.name=vit_tiny"),
             (alexnet_file, ["model.name=resnet18", "data.img_size=128"], "cannot start model.name=resnet18"),
             (alexnet_file, ["model.name=mrnet_cnn", "data.img_size=32"], "needs data.img_size >= 128")]
    for path, over, needle in cases:
        with pytest.raises(SbsslError, match=needle) as e:
            encoder_init(str(path)).configure(load_config(None, over))
        assert str(path) in str(e.value)
    res = run_cli("finetune", "--data", tiny_set, "--out", tmp_path / "run", *CNN_128, f"init={truncated}")
    assert_user_error(res, "cut.pth", "not a readable weights file")
    assert not (tmp_path / "run" / "metrics.json").exists()
