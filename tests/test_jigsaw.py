"""Reference [20]'s jigsaw pretext (jigsaw.py, models/jigsaw.py): the permutation set, the puzzle's tiles, and a
pretraining run whose CNN starts the classifier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sbssl.config import load_config
from sbssl.errors import ConfigError
from sbssl.jigsaw import JigsawPuzzle, permutation_set
from sbssl.utils.draw import Draw


def test_permutation_set_is_spread_out_and_deterministic():
    p = permutation_set(100)
    assert p.shape == (100, 9) and len({tuple(r) for r in p}) == 100
    assert all(sorted(r) == list(range(9)) for r in p)
    d = (p[:, None] != p[None]).sum(-1)
    np.fill_diagonal(d, 9)
    rng = np.random.default_rng(0)  # random sets of the same size come far closer together
    random = np.array([rng.permutation(9) for _ in range(100)])
    dr = (random[:, None] != random[None]).sum(-1)
    np.fill_diagonal(dr, 9)
    assert d.min() >= 6 > dr.min()
    assert np.array_equal(permutation_set(100), p)


def test_puzzle_tiles_are_the_cells_shuffled_by_the_drawn_permutation():
    x = torch.arange(2 * 30 * 30, dtype=torch.float32).view(2, 1, 30, 30)
    tiles, label = JigsawPuzzle(permutations=24, gap=0)(x, Draw("cpu", torch.Generator().manual_seed(1)))
    assert tiles.shape == (2, 9, 1, 10, 10)  # gap 0: each tile is its whole cell
    perms = permutation_set(24)
    for b in range(2):
        for k, tile in enumerate(perms[label[b]]):
            r, c = divmod(int(tile), 3)
            assert torch.equal(tiles[b, k, 0], x[b, 0, 10 * r: 10 * r + 10, 10 * c: 10 * c + 10])
    jittered, _ = JigsawPuzzle(24, gap=3)(x, Draw("cpu", torch.Generator().manual_seed(1)))
    assert jittered.shape[-1] == 7  # a random 7 px crop inside each 10 px cell
    noisy, _ = JigsawPuzzle(24, gap=3, noise=0.5)(x, Draw("cpu", torch.Generator().manual_seed(1)))
    assert 0.3 < (noisy - jittered).std() < 0.7


def test_jigsaw_pretraining_learns_and_starts_the_cnn(tiny_set: Path, tmp_path: Path):
    from sbssl import report
    from sbssl.engine.pretrain import pretext_name, pretrain
    from sbssl.models.build import build_classifier
    from sbssl.models.encoder_file import encoder_init

    over = ["data.img_size=16", "jigsaw.permutations=10", "train.epochs=3", "train.batch_size=32",
            "trainer.accelerator=cpu"]
    pretrain(load_config("pretrain/jigsaw_cpu", over), tiny_set, tmp_path / "jig")
    losses = [json.loads(line)["loss"] for line in (tmp_path / "jig" / "log.jsonl").read_text().splitlines()]
    assert losses[0] < np.log(10) + 0.3 and losses[-1] < losses[0]  # from chance over 10 puzzles, down
    assert not (tmp_path / "jig" / "recon").exists()
    enc = encoder_init(str(tmp_path / "jig"))
    model = build_classifier(enc.configure(load_config("finetune/demo")), enc)
    torch.testing.assert_close(model.encoder.features[0].weight, enc.weights["features.0.weight"])
    # the file says which pretext made it, so a run started from it (and the report) names the jigsaw, not GMML
    assert enc.tag == "jigsaw" and encoder_init("builtin:cpu").tag == "gmml"
    assert report._method({"init": f"{enc.tag}:{enc.path}", "model": "mrnet_cnn"}) == "[20] jigsaw CNN"
    assert report._method({"init": "jigsaw+noise:x", "model": "mrnet_cnn"}) == "[20] + noise"
    assert pretext_name(load_config("pretrain/jigsaw_cpu", ["jigsaw.noise=0.5"])) == "jigsaw+noise"
    with pytest.raises(ConfigError, match="a CNN for pretext=jigsaw"):
        load_config(None, ["pretext=jigsaw", "model.name=vit_tiny"])
