"""Progress without a terminal: plain lines, throttled, always the last one; silent on other ranks."""

from __future__ import annotations

from sbssl.utils.progress import progress


def test_plain_lines_when_not_a_terminal(capsys):
    with progress("pretrain 1/2", 3, "steps", every=0.0) as bar:
        for _ in range(3):
            bar.advance(status="loss 0.5")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and lines[-1].startswith("pretrain 1/2: 3/3 steps loss 0.5 (")
    with progress("synth", 50, "exams", every=3600.0) as bar:
        for _ in range(50):
            bar.advance()
    lines = capsys.readouterr().err.splitlines()
    assert lines == [lines[0]] and lines[0].startswith("synth: 50/50 exams")  # throttled: only the last
    with progress("rank 1", 5, enabled=False) as bar:
        for _ in range(5):
            bar.advance()
    assert capsys.readouterr().err == ""


def test_the_bar_shows_the_running_mean_that_the_log_records(capsys):
    """The bar's loss is the epoch's running mean (not the last step's), ending at the logged epoch loss."""
    from pathlib import Path

    import pytest
    import torch
    from lightning_fabric import Fabric
    from omegaconf import OmegaConf

    from sbssl.engine.loop import Trainer, train_one_epoch

    fabric = Fabric(accelerator="cpu", devices=1)
    model = torch.nn.Linear(1, 1)
    model_f, opt_f = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.0))
    train = OmegaConf.create({"min_lr": 0.0, "weight_decay": 0.0, "weight_decay_end": 0.0, "clip_grad": 0.0,
                              "nonfinite": "stop"})
    losses = [3.0, 1.0, 2.0, 6.0, 0.5, 1.5, 4.0]
    trainer = Trainer(fabric, model_f, opt_f, train, 0.0, len(losses), 0, 0, Path("unused"))
    rec = train_one_epoch(trainer, range(len(losses)), lambda i, draw: model_f(torch.ones(1, 1)).sum() * 0 + losses[i],
                          lambda b: 1, 0, "pretrain 1/1", len(losses), "img")
    last = capsys.readouterr().err.splitlines()[-1]
    shown = float(last.split("loss ")[1].split()[0])
    assert rec["loss"] == pytest.approx(sum(losses) / len(losses)) and shown == pytest.approx(rec["loss"], abs=1e-4)
    assert shown != pytest.approx(losses[-1], abs=1e-3)  # not the last step's
