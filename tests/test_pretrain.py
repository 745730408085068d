"""GMML pretraining: the model, the loss, the engine (resume, DDP), the exported encoder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file

from sbssl.config import load_config
from sbssl.data.cache import SliceCache, pooled_statistics, slice_cache_for
from sbssl.data.datasets import SliceDataset
from sbssl.data.layout import PLANES
from sbssl.engine import checkpoint as ckpt
from sbssl.engine.pretrain import pretrain
from sbssl.errors import SbsslError
from sbssl.models.build import build_gmml
from sbssl.models.gmml import masked_l1, patch_statistics, skip_indices
from sbssl.workflow import finetune

from .conftest import run_cli

TINY = ["model.name=vit_tiny", "model.depth=4", "data.img_size=32", "model.patch_size=8", "train.batch_size=32",
        "train.warmup_epochs=1", "train.lr=2e-3", "train.recon_every=1", "trainer.accelerator=cpu"]


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


def test_masked_l1_ignores_unmasked_pixels():
    torch.manual_seed(0)
    target, recon = torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16)
    mask = torch.rand(4, 1, 16, 16) > 0.5
    base = masked_l1(recon, target, mask)
    changed = torch.where(mask, recon, recon + 100 * torch.randn_like(recon))
    assert torch.equal(masked_l1(changed, target, mask), base)
    assert torch.allclose(base, (recon - target).abs()[mask.expand_as(recon)].mean())


def test_patch_standardised_target_is_per_patch_and_maps_back():
    """mask.norm_patch: each p x p patch of the target standardised by its own statistics; the loss is the
    masked L1 to that, and the reconstruction handed to figures is in the slice's units again."""
    from sbssl.data.preprocessing import Preprocessing
    from sbssl.engine.tasks import GMMLTask
    from sbssl.utils.draw import Draw

    x = torch.randn(2, 1, 8, 8) * 3 + 1
    mean, std = patch_statistics(x, 4)
    z = (x - mean) / std
    for i in (0, 4):  # every 4 x 4 patch has mean 0 and (near) unit std, whatever its brightness
        patch = z[:, :, i:i + 4, i:i + 4]
        assert patch.mean().abs() < 1e-5 and abs(patch.std(unbiased=False) - 1) < 1e-2
    flat = patch_statistics(torch.zeros(1, 1, 4, 4), 4)[1]
    assert torch.allclose(flat, torch.full_like(flat, 0.1))  # a flat patch is not magnified beyond 10x

    cfg = load_config("pretrain/cpu", ["mask.norm_patch=4", "augment.jitter=0", "augment.blur=0",
                                       "augment.sharpness=0", "augment.flip=0", "augment.crop_scale=[1.0,1.0]"])
    task = GMMLTask(cfg, Preprocessing.from_config(cfg, 0.3, 0.25))
    x_u8 = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
    target, _, mask = task.inputs(x_u8, Draw("cpu", torch.Generator().manual_seed(0)))
    m, s = patch_statistics(target, 4)
    perfect = lambda corrupted, _mask: (target - m) / s  # noqa: E731 - predicts the normalised target exactly
    out = task(perfect, x_u8, Draw("cpu", torch.Generator().manual_seed(0)))
    assert out.loss < 1e-5 and torch.allclose(out.recon, target, atol=1e-5)
    assert mask.any() and task.norm_patch == 4
    task.norm_patch = 0  # the paper's target: the same prediction is now far off
    assert task(perfect, x_u8, Draw("cpu", torch.Generator().manual_seed(0))).loss > 0.1


def test_skip_blocks_are_the_configured_ones(monkeypatch):
    cfg = load_config(None, ["model.name=vit_tiny", "data.img_size=32", "model.patch_size=8",
                             "model.skip_blocks=[2,5,12]"])
    model = build_gmml(cfg).eval()
    assert model.skip == [1, 4, 11]
    seen = {}
    for i, blk in enumerate(model.encoder.blocks):
        blk.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out))
    captured = {}
    monkeypatch.setattr(model.head, "forward", lambda tokens, grid: captured.setdefault("t", tokens) * 0)
    model(torch.randn(2, 1, 32, 32))
    want = model.encoder.norm(torch.stack([seen[1], seen[4], seen[11]]).mean(0))[:, 1:]
    assert torch.allclose(captured["t"], want, atol=1e-5)
    assert skip_indices([6, 8, 10, 12], 6) == [2, 3, 4, 5]  # same relative depth for a shallower encoder


def test_loss_falls_and_run_folder_is_complete(tiny_set: Path, tmp_path: Path):
    out = tmp_path / "pre"
    logs = ["trainer.loggers=[csv,tensorboard,mlflow]"]
    pretrain(load_config(None, TINY + ["train.epochs=4", *logs]), tiny_set, out)
    losses = _losses(out)
    assert losses[-1] < 0.8 * losses[0], losses
    for f in ("config.yaml", "log.jsonl", "checkpoints/last.pt", "encoder.safetensors", "recon/epoch_0004.png"):
        assert (out / f).exists(), f
    rec = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert rec["img_per_s"] > 0 and rec["step"] > 0
    # the encoder alone loads into timm as-is
    sd = load_file(out / "encoder.safetensors")
    with safe_open(str(out / "encoder.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["depth"] == "4" and meta["timm_name"] == "vit_tiny_patch16_224"
    enc = timm.create_model(meta["timm_name"], pretrained=False, img_size=32, patch_size=8, in_chans=1,
                            num_classes=0, depth=int(meta["depth"]))
    enc.load_state_dict(sd)
    assert torch.equal(enc.pos_embed, sd["pos_embed"])
    # a finished run is not overwritten
    res = run_cli("pretrain", "--data", tiny_set, "--out", out, *TINY)
    assert res.returncode == 2 and "--overwrite" in res.stderr
    # --resume extends it to a longer schedule from its checkpoint, and refuses a schedule it has already done
    before = load_file(out / "encoder.safetensors")
    with pytest.raises(SbsslError, match="larger train.epochs"):
        pretrain(load_config(None, TINY + ["train.epochs=4"]), tiny_set, out, resume=True)
    pretrain(load_config(None, TINY + ["train.epochs=5", *logs]), tiny_set, out, resume=True)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert_logs_match(out, "pretrain", records, mlflow=True)
    assert [r["loss"] for r in records[:4]] == losses and len(records) == 5
    assert records[4]["step"] == 5 * records[0]["step"] and records[4]["loss"] < 0.9 * losses[0]
    assert OmegaConf.load(out / "config.yaml").train.epochs == 5
    assert json.loads((out / "run.json").read_text())["extended"] == [{"from_epoch": 4, "epochs": 5}]
    after = load_file(out / "encoder.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_resume_reproduces_the_uninterrupted_run(tiny_set: Path, tmp_path: Path, monkeypatch, caplog):
    args = TINY + ["train.epochs=3", "train.deterministic=true", "data.cache_dir=" + str(tmp_path / "c")]
    pretrain(load_config(None, args), tiny_set, tmp_path / "a")

    real_save, calls = ckpt.save_checkpoint, []

    def crash_after_second(folder, state):
        real_save(folder, state)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies right after epoch 2's checkpoint

    monkeypatch.setattr(ckpt, "save_checkpoint", crash_after_second)
    with pytest.raises(KeyboardInterrupt):
        pretrain(load_config(None, args), tiny_set, tmp_path / "b")
    monkeypatch.undo()
    assert len(_losses(tmp_path / "b")) == 2
    last = tmp_path / "b" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # and epoch 2's checkpoint is damaged on disk
    pretrain(load_config(None, args), tiny_set, tmp_path / "b")  # resumes automatically, from prev.pt
    assert "unreadable checkpoint" in caplog.text and "resuming from" in caplog.text
    assert _losses(tmp_path / "b") == _losses(tmp_path / "a")
    a, b = load_file(tmp_path / "a" / "encoder.safetensors"), load_file(tmp_path / "b" / "encoder.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_process_ddp_matches_one_process(tiny_set: Path, tmp_path: Path, monkeypatch):
    common = ["model.name=vit_tiny", "model.depth=4", "data.img_size=32", "model.patch_size=8", "train.epochs=1",
              "train.max_steps=4", "model.drop_path=0", "trainer.precision=32-true", "trainer.accelerator=cpu",
              "train.deterministic=true", "data.cache_dir=" + str(tmp_path / "c")]
    env_port = str(29500 + os.getpid() % 1000)
    pretrain(load_config(None, [*common, "train.batch_size=16"]), tiny_set, tmp_path / "one")  # one process
    monkeypatch.setenv("MASTER_PORT", env_port)  # the launcher's rendezvous port; restored after the test
    two = run_cli("pretrain", "--data", tiny_set, "--out", tmp_path / "two", *common, "train.batch_size=8",
                  "trainer.devices=2", "trainer.strategy=ddp", fresh=True)  # the launcher re-executes itself
    assert two.returncode == 0, two.stderr
    la, lb = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert la == pytest.approx(lb, rel=1e-4)
    a, b = load_file(tmp_path / "one" / "encoder.safetensors"), load_file(tmp_path / "two" / "encoder.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


@pytest.mark.parametrize("recipe", ["pretrain/vit_tiny", "pretrain/vit_small", "pretrain/vit_base",
                                    "pretrain/gmml_cnn"])
def test_paper_recipes_run_a_few_steps(recipe: str, tiny_set: Path, tmp_path: Path):
    cfg = load_config(recipe, ["train.batch_size=2", "train.max_steps=2", "train.epochs=1", "train.recon_every=0",
                               "data.cache_dir=" + str(tmp_path / "c")])
    assert cfg.data.img_size == 256 and cfg.mask.max_ratio == 0.7
    out = pretrain(cfg, tiny_set, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "log.jsonl").read_text())["step"] == 2
    assert out.exists()


def test_slice_dataset_reads_across_plane_caches_in_the_order_asked():
    caches = [SliceCache(np.full((n, 4, 4), v, np.uint8), np.array([0, n]), ["x"], 0.0, 1.0)
              for n, v in ((3, 10), (2, 20), (4, 30))]
    ds = SliceDataset(caches)
    assert len(ds) == 9
    got = ds[[8, 0, 3, 4, 2]][:, 0, 0, 0].tolist()
    assert got == [30, 10, 20, 20, 10] and ds[5].shape == (1, 4, 4) and int(ds[5][0, 0, 0]) == 30
    data = [np.random.default_rng(k).random(n) for k, n in enumerate((30, 50, 20))]
    parts = [SliceCache(d, np.array([0, len(d)]), ["x"], float(d.mean()), float(d.std())) for d in data]
    np.testing.assert_allclose(pooled_statistics(parts), (np.concatenate(data).mean(), np.concatenate(data).std()))


def test_pretraining_on_all_planes(tiny_set: Path, tmp_path: Path):
    over = TINY + ["data.plane=all", "train.epochs=1", "train.recon_every=0", "data.img_size=16",
                   "data.cache_dir=" + str(tmp_path / "c")]
    pretrain(load_config(None, over), tiny_set, tmp_path / "all")
    caches = [slice_cache_for(load_config(None, over + [f"data.plane={p}"]), tiny_set, "train")[0] for p in PLANES]
    n = sum(len(c.data) for c in caches)
    assert json.loads((tmp_path / "all" / "log.jsonl").read_text())["step"] == n // 32  # every plane's slices
    pre = json.loads((tmp_path / "all" / "run.json").read_text())["preprocessing"]
    assert (pre["mean"], pre["std"]) == pytest.approx(pooled_statistics(caches))
    with pytest.raises(SbsslError, match="data.plane=all is for pretraining"):
        finetune(load_config(None, ["data.plane=all"]), tiny_set, tmp_path / "ft")
    generic = tmp_path / "generic"
    generic.mkdir()
    for f in sorted((tiny_set / "train" / "sagittal").glob("*.npy"))[:4]:
        (generic / f.name).write_bytes(f.read_bytes())
    with pytest.raises(SbsslError, match="needs an MRNet folder"):
        pretrain(load_config(None, over), generic, tmp_path / "g")


def assert_logs_match(out: Path, name: str, records: list[dict], tensorboard: bool = True,
                      mlflow: bool = False) -> None:
    """The CSV (and TensorBoard, MLflow) logs hold every optimiser step once and every epoch of log.jsonl, with
    the same numbers."""
    import csv

    rows = list(csv.DictReader((out / "logs" / "csv" / name / "metrics.csv").open()))
    steps = [int(r["step"]) for r in rows if r["train/loss"]]
    assert steps == list(range(1, records[-1]["step"] + 1))  # each update once, resumed or not
    epochs = [r for r in rows if r["epoch/loss"]]
    assert [int(r["step"]) for r in epochs] == [r["step"] for r in records]
    assert [float(r["epoch/loss"]) for r in epochs] == pytest.approx([r["loss"] for r in records], rel=1e-6)
    assert [float(r["epoch/lr"]) for r in epochs] == pytest.approx([r["lr"] for r in records], rel=1e-6)
    by_step = {int(r["step"]): r for r in rows if r["train/loss"]}
    for rec in records:  # the epoch's last update logged the lr and weight decay the epoch record holds
        assert float(by_step[rec["step"]]["train/lr"]) == pytest.approx(rec["lr"], rel=1e-6)
        assert float(by_step[rec["step"]]["train/wd"]) == pytest.approx(rec["wd"], rel=1e-6)
    if tensorboard:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        ea = EventAccumulator(str(out / "logs" / "tensorboard" / name))
        ea.Reload()
        ev = ea.Scalars("epoch/loss")
        assert [e.step for e in ev] == [r["step"] for r in records]
        assert [e.value for e in ev] == pytest.approx([r["loss"] for r in records], rel=1e-5)
        assert [e.step for e in ea.Scalars("train/loss")] == steps
    if mlflow:
        from mlflow.tracking import MlflowClient

        from sbssl.engine.mlflow_logger import tracking_uri

        client = MlflowClient(tracking_uri=tracking_uri(out / "logs" / "mlflow"))
        (run,) = client.search_runs([client.get_experiment_by_name("sbssl").experiment_id])
        assert run.info.run_name == name and run.info.status == "FINISHED"
        hist = client.get_metric_history(run.info.run_id, "epoch/loss")
        assert [m.step for m in hist] == [r["step"] for r in records]
        assert [m.value for m in hist] == pytest.approx([r["loss"] for r in records], rel=1e-6)
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == steps
