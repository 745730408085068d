"""Parts by name: the config's allowed values come from the registries, and a part registered at run time is one."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from sbssl.config import load_config
from sbssl.errors import ConfigError
from sbssl.models.build import build_classifier
from sbssl.models.slice_classifier import MaxAggregator
from sbssl.registry import AGGREGATORS, CNNS, LOGGERS, MASK_REPLACEMENTS, Registry

TINY = ["model.name=vit_tiny", "model.depth=2", "data.img_size=32", "model.patch_size=8"]


class MedianAggregator(MaxAggregator):
    """The median over an exam's slices (a user's own aggregator)."""

    def forward(self, feats, lengths):
        return torch.stack([f.median(0).values for f in feats.split(lengths.tolist())]), None


def test_a_registered_aggregator_is_a_valid_config_value_and_builds(monkeypatch):
    with pytest.raises(ConfigError, match="finetune.aggregator='median' is not one of concat, max"):
        load_config(None, ["finetune.aggregator=median"])
    monkeypatch.setattr(AGGREGATORS, "_entries", dict(AGGREGATORS._entries))  # undone after the test
    assert AGGREGATORS.register("median")(MedianAggregator) is MedianAggregator
    with pytest.raises(ValueError, match="registered already"):
        AGGREGATORS.register("median", MedianAggregator)
    model = build_classifier(load_config(None, [*TINY, "finetune.aggregator=median", "finetune.slices=0"])).eval()
    x, lengths = torch.randn(5, 1, 32, 32), torch.tensor([2, 3])
    feats = model.slice_features(x)
    with torch.no_grad():
        logits = model(x, lengths)
    want = model.head(torch.stack([feats[:2].median(0).values, feats[2:].median(0).values]))
    assert torch.allclose(logits, want, atol=1e-6)


def test_lazy_entries_resolve_and_unknown_names_say_what_is_known():
    assert AGGREGATORS["max"] is MaxAggregator and CNNS["mrnet_cnn"].__name__ == "MRNetCNN"
    assert set(MASK_REPLACEMENTS) == {"zeros", "ones", "noise", "image"} and set(LOGGERS) >= {"csv", "tensorboard"}
    with pytest.raises(KeyError, match="unknown 'nope' \\(known: concat, max"):
        AGGREGATORS["nope"]  # noqa: B018
    plain = Registry("x.y", {"a": "not:imported"}, lazy=False)
    assert plain["a"] == "not:imported"
    with pytest.raises(ConfigError, match="mask.type='noise,mix'"):  # mix means all of them, not one of a list
        load_config(None, ["mask.type=noise,mix"])


def test_registries_and_config_checks_load_without_torch():
    code = ("import sys; from sbssl.config import load_config; from sbssl.registry import AGGREGATORS; "
            "load_config(None, ['finetune.aggregator=instance', 'trainer.loggers=[csv,mlflow]']); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
