"""Continued pretraining from an encoder, and fine-tuning's init=auto, which pretrains on a folder of another kind
before it fine-tunes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from sbssl import workflow
from sbssl.config import load_config
from sbssl.engine.pretrain import pretrain
from sbssl.engine.schedules import apply_schedule, hold, param_groups
from sbssl.errors import SbsslError
from sbssl.synth import SynthSpec, generate
from sbssl.weights import builtin_path
from sbssl.workflow import auto_init, finetune

from .conftest import FT


def test_continued_pretraining_starts_from_the_encoder_and_keeps_its_record(gmml_run: Path, tiny_set: Path,
                                                                           tmp_path: Path):
    # asked for another depth, patch and size: the encoder's architecture wins, as in fine-tuning
    over = ["model.depth=2", "model.patch_size=4", "data.img_size=16", "trainer.accelerator=cpu", "train.epochs=1",
            "train.batch_size=32", "train.recon_every=0", "train.warmup_epochs=0", "train.max_steps=2"]
    start = load_file(gmml_run / "encoder.safetensors")
    still = pretrain(load_config(None, [*over, f"init={gmml_run}", "train.lr=1e-12"]), tiny_set, tmp_path / "a")
    moved = pretrain(load_config(None, [*over, f"init={gmml_run}", "train.lr=5e-2"]), tiny_set, tmp_path / "b")
    a, b = load_file(still), load_file(moved)
    assert a.keys() == start.keys()  # 4 blocks, patch 8, 32 px: the encoder's
    assert all(torch.allclose(a[k], start[k], atol=1e-5) for k in start)  # loaded, then barely moved (the lr floor)
    assert any(not torch.allclose(b[k], start[k], atol=1e-3) for k in start)  # and they do train
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["init"] == f"gmml:{gmml_run / 'encoder.safetensors'}"
    record = json.loads((gmml_run / "run.json").read_text())["preprocessing"]
    assert run["preprocessing"] == record  # the encoder's intensity statistics, not this run's own


def test_held_encoder_waits_while_the_fresh_decoder_trains(gmml_run: Path, tiny_set: Path, tmp_path: Path):
    """train.hold_epochs: continued pretraining leaves the encoder exactly as loaded while the decoder learns,
    and releases it afterwards."""
    over = ["trainer.accelerator=cpu", "train.epochs=1", "train.batch_size=16", "train.recon_every=0",
            "train.warmup_epochs=0", "train.lr=5e-2", f"init={gmml_run}"]
    start = load_file(gmml_run / "encoder.safetensors")
    held = pretrain(load_config(None, [*over, "train.hold_epochs=1"]), tiny_set, tmp_path / "held")
    pretrain(load_config(None, [*over, "train.lr=1e-12"]), tiny_set, tmp_path / "still")
    assert all(torch.equal(load_file(held)[k], start[k]) for k in start)  # not one bit moved

    def decoder(run: Path) -> dict[str, torch.Tensor]:
        model = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
        return {k: v for k, v in model.items() if not k.startswith("encoder.")}

    a, b = decoder(tmp_path / "held"), decoder(tmp_path / "still")
    assert a and any(not torch.allclose(a[k], b[k], atol=1e-3) for k in a if a[k].is_floating_point())


def test_held_groups_get_their_lr_back_at_the_step_named():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    groups = hold(param_groups(model), model[0], steps=3)
    opt = torch.optim.AdamW(groups, lr=1.0)
    assert sum(len(g["params"]) for g in opt.param_groups) == 4 and len(opt.param_groups) == 4  # split, all kept
    for step, want in ((0, 0.0), (2, 0.0), (3, 0.1)):
        apply_schedule(opt, 0.1, 0.05, step)
        held = {g["lr"] for g in opt.param_groups if g.get("hold_steps")}
        assert held == {want} and {g["lr"] for g in opt.param_groups if not g.get("hold_steps")} == {0.1}


def test_auto_init_takes_the_shipped_encoder_on_the_demo_generators_data(tiny_set: Path, tmp_path: Path):
    cfg = load_config("finetune/demo", ["init=auto"])
    got = auto_init(cfg, tiny_set, tmp_path / "run", overwrite=False)
    assert got.init == "builtin:cpu" and cfg.init == "auto"  # a copy: the asked config is left as it was
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_auto_init_pretrains_on_another_familys_own_slices_first(tmp_path: Path, caplog, monkeypatch):
    root = tmp_path / "clinic" / "MRNet-v1.0"
    generate(root, SynthSpec(train=8, valid=6, size=48, seed=1, prevalence=0.5, family="clinic", workers=2))
    out = tmp_path / "run"
    recipe = workflow.own_pretraining_config  # the real recipe, cut to two steps (the estimate still says 24 epochs)
    monkeypatch.setattr(workflow, "own_pretraining_config",
                        lambda cfg: OmegaConf.merge(recipe(cfg), {"train": {"max_steps": 2}}))
    small = [*FT, "init=auto", "finetune.ensemble=1", "train.epochs=1", "finetune.probe_steps=5",
             "finetune.select=last", "trainer.accelerator=cpu"]
    with caplog.at_level(logging.INFO, logger="sbssl"):
        finetune(load_config("finetune/demo", small), root, out)
    own = out / "pretrain" / "encoder.safetensors"
    assert "slices x 24 epochs, about" in caplog.text  # the cost is said before it starts
    pre = json.loads((out / "pretrain" / "run.json").read_text())
    asked = load_config("finetune/demo").data
    assert pre["init"] == "scratch" and pre["preprocessing"]["roi"] == asked.roi  # the crops it will classify
    assert (pre["preprocessing"]["crop"], pre["preprocessing"]["slab"]) == (asked.crop, asked.slab)
    assert json.loads((out / "run.json").read_text())["init"] == f"gmml:{own}"
    shipped, mine = load_file(builtin_path("cpu")), load_file(own)
    assert mine.keys() == shipped.keys()  # the shipped encoder's architecture (pretrain/cpu's)
    assert (out / "metrics.json").is_file()
    # a finished run is refused at once, before any pretraining, and its encoder is left as it was
    stamp = own.stat().st_mtime_ns
    with pytest.raises(SbsslError, match="--overwrite"):
        finetune(load_config("finetune/demo", small), root, out)
    assert own.stat().st_mtime_ns == stamp
