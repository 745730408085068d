"""GMML for the CNN (models/gmml_cnn.py): masked positions never reach a sparse encoder, batch norm counts visible
positions only, and the pretrained CNN is what fine-tuning starts from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sbssl.config import load_config
from sbssl.errors import SbsslError
from sbssl.masking import GroupMasking
from sbssl.models.gmml_cnn import GMMLConvAutoencoder, masked_batch_norm
from sbssl.models.resnet import ResNet18Encoder
from sbssl.models.slice_classifier import MRNetCNN

CNN = ["model.name=mrnet_cnn", "data.img_size=16", "mask.align=4", "trainer.accelerator=cpu",
       "train.batch_size=32", "train.recon_every=0", "train.warmup_epochs=0"]


def _corrupt(x: torch.Tensor, align: int) -> tuple[torch.Tensor, torch.Tensor]:
    return GroupMasking(0.7, align)(x)


@pytest.mark.parametrize("conv_masking", ["sparse", "dense"])
@pytest.mark.parametrize(("cnn", "stride"), [(MRNetCNN, 4), (ResNet18Encoder, 8)])
def test_only_the_dense_encoder_sees_what_the_masked_pixels_hold(conv_masking: str, cnn: type, stride: int):
    torch.manual_seed(0)
    model = GMMLConvAutoencoder(cnn(1, 32), 32, 1, conv_masking).train()
    assert model.stride == stride and model.required_align == (stride if conv_masking == "sparse" else 1)
    corrupted, mask = _corrupt(torch.randn(6, 1, 32, 32), stride)  # a ResNet: residual sums masked too
    other = torch.where(mask, 5 * torch.randn_like(corrupted), corrupted)  # other values in the groups only
    a, b = model(corrupted, mask), model(other, mask)
    assert a.shape == corrupted.shape
    if conv_masking == "sparse":  # batch statistics included: nothing of the masked pixels leaks anywhere
        assert torch.equal(a, b)
    else:
        assert (a - b).abs().max() > 1e-3


def test_masked_batch_norm_takes_its_statistics_from_visible_positions():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3, momentum=0.5).train()
    x = torch.randn(4, 3, 8, 8)
    keep = (torch.rand(4, 1, 8, 8) > 0.4).float()
    x_masked = torch.where(keep.bool(), x, torch.full_like(x, 100.0))  # what hides under the mask is ignored
    y = masked_batch_norm(bn, x_masked, keep)
    vis = x.permute(1, 0, 2, 3)[:, keep[:, 0].bool()]  # (C, n visible)
    mean, var = vis.mean(1), vis.var(1, unbiased=False)
    expect = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + bn.eps)
    torch.testing.assert_close(y[keep.expand_as(x).bool()], expect[keep.expand_as(x).bool()], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn.running_mean, 0.5 * mean, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(bn.running_var, 0.5 + 0.5 * vis.var(1, unbiased=True), atol=1e-5, rtol=1e-5)
    bn.eval()  # eval: plain batch norm with those estimates
    torch.testing.assert_close(masked_batch_norm(bn, x, keep), bn(x))


def test_sparse_groups_must_align_with_the_cnn_stride(tiny_set: Path, tmp_path: Path):
    from sbssl.engine.pretrain import pretrain

    with pytest.raises(SbsslError, match=r"mask.align=2: .* a multiple of 4"):
        pretrain(load_config(None, [*CNN, "model.conv_masking=sparse", "mask.align=2", "train.epochs=1"]), tiny_set,
                 tmp_path / "bad")
    assert not (tmp_path / "bad" / "encoder.safetensors").exists()


def test_gmml_cnn_pretrains_and_its_encoder_starts_the_cnn_classifier(tiny_set: Path, tmp_path: Path):
    import sbssl
    from sbssl.engine.pretrain import pretrain
    from sbssl.models.build import build_classifier
    from sbssl.models.encoder_file import encoder_init
    from sbssl.workflow import finetune

    pre = tmp_path / "pre"
    pretrain(load_config("pretrain/gmml_cnn_cpu", [*CNN, "train.epochs=3"]), tiny_set, pre)
    losses = [json.loads(line)["loss"] for line in (pre / "log.jsonl").read_text().splitlines()
              if "epoch" in json.loads(line) and "loss" in json.loads(line)]
    assert len(losses) == 3 and losses[-1] < losses[0]  # it learns to restore the groups
    enc = encoder_init(str(pre))
    assert enc.meta["name"] == "mrnet_cnn" and enc.architecture()["model"] == {"name": "mrnet_cnn", "in_chans": 1}
    # a user who asks for the demo's ViT recipe from this encoder gets the CNN it holds, with its weights
    asked = load_config("finetune/demo", [f"init={pre}"])
    model = build_classifier(enc.configure(asked), enc)
    assert isinstance(model.encoder, MRNetCNN)
    torch.testing.assert_close(model.encoder.features[0].weight, enc.weights["features.0.weight"])
    encoder, prep = sbssl.load_encoder(pre)
    assert isinstance(encoder, MRNetCNN) and prep.img_size == 16
    out = tmp_path / "ft"
    finetune(load_config("finetune/demo", [f"init={pre}", "finetune.ensemble=1", "finetune.probe_steps=0",
                                           "train.epochs=1", "finetune.slices=4", "trainer.accelerator=cpu"]),
             tiny_set, out)
    run = json.loads((out / "run.json").read_text())
    assert run["architecture"]["model"]["name"] == "mrnet_cnn" and run["init"].startswith("gmml:")
    assert json.loads((out / "metrics.json").read_text())["n"] == 12
    # the CNN explained (Grad-CAM), as the demo's explain-cnn, and the report shows those overlays by their folder
    from sbssl.explain import explain
    from sbssl.report import discover

    pngs = explain(out, tiny_set, tmp_path / "explain-cnn", n=2)
    assert len(pngs) == 2 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert discover([tmp_path]).overlays == sorted(pngs)


def test_dense_gmml_cnn_runs_on_unaligned_groups(tiny_set: Path, tmp_path: Path):
    from sbssl.engine.pretrain import pretrain

    pretrain(load_config(None, [*CNN, "model.conv_masking=dense", "mask.align=1", "train.epochs=1",
                                "train.max_steps=2"]), tiny_set, tmp_path / "dense")
    assert (tmp_path / "dense" / "encoder.safetensors").exists()


def test_resnet18_is_a_cnn_encoder_for_gmml_the_jigsaw_and_grad_cam(tiny_set: Path, tmp_path: Path):
    from sbssl.engine.pretrain import pretrain
    from sbssl.explain import explain
    from sbssl.models.build import build_classifier
    from sbssl.models.encoder_file import encoder_init
    from sbssl.workflow import finetune

    res = ["model.name=resnet18", "train.max_steps=2"]
    pre = pretrain(load_config("pretrain/gmml_cnn_cpu", [*CNN, *res, "model.conv_masking=sparse", "mask.align=8",
                                                         "train.epochs=1"]), tiny_set, tmp_path / "pre")
    # fp32: in the full suite on a cold /tmp/torchinductor_root this bf16 run's first loss came out NaN (twice,
    # 2026-12-06; never alone or in parts of the suite); the plumbing is what is tested here, not bf16 numerics
    jig = pretrain(load_config("pretrain/jigsaw_cpu", [*CNN, *res, "jigsaw.permutations=10", "train.epochs=1",
                                                       "trainer.precision=32-true"]), tiny_set, tmp_path / "jig")
    enc = encoder_init(str(pre))
    model = build_classifier(enc.configure(load_config("finetune/demo", [f"init={pre}"])), enc)
    assert isinstance(model.encoder, ResNet18Encoder) and model.encoder.img_size == 16
    torch.testing.assert_close(model.encoder.features[3][0].conv1.weight, enc.weights["features.3.0.conv1.weight"])
    for enc, tag in ((pre, "gmml"), (jig, "jigsaw")):
        out = tmp_path / f"ft-{tag}"
        finetune(load_config("finetune/demo", [f"init={enc}", "finetune.ensemble=1", "finetune.probe_steps=0",
                                               "train.epochs=1", "finetune.slices=4", "trainer.accelerator=cpu"]),
                 tiny_set, out)
        run = json.loads((out / "run.json").read_text())
        assert run["architecture"]["model"]["name"] == "resnet18" and run["init"].startswith(f"{tag}:")
    pngs = explain(out, tiny_set, tmp_path / "explain", n=1)
    assert len(pngs) == 1 and pngs[0].read_bytes()[:4] == b"\x89PNG"
