"""benchmarks/label_efficiency.py: arms paired against each other see the same exams the same way."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from sbssl.config import load_config

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "label_efficiency.py"


def _script():
    spec = importlib.util.spec_from_file_location("label_efficiency", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_arm_looks_at_the_same_region_and_differs_only_in_what_it_names():
    le = _script()
    inits = le.cnn_arms(["dense=runs/gmml_cnn", "runs/jigsaw"])
    assert inits == {"gmml-cnn-dense": "runs/gmml_cnn", "gmml-cnn": "runs/jigsaw"}
    cfgs = {arm: load_config(le.base_recipe(arm), le.arm_overrides(arm, "builtin:cpu", inits))
            for arm in [*le.ARMS, *inits]}
    # one region of interest and input geometry for all: a ViT arm on the image centre against a CNN arm about the
    # knee would measure the crop, not the model
    for key in ("roi", "img_size", "crop", "slab", "plane", "task"):
        assert len({str(c.data[key]) for c in cfgs.values()}) == 1, key
    assert cfgs["lpft"].data.roi == load_config("finetune/demo").data.roi
    # CNN arms: the demo's CNN recipe, random or from the named encoder
    assert {c.model.name for a, c in cfgs.items() if a == "cnn" or a.startswith("gmml-cnn")} == {"mrnet_cnn"}
    assert str(cfgs["gmml-cnn-dense"].init) == "runs/gmml_cnn" and str(cfgs["cnn"].init) == "scratch"
    # GMML ViT arms and their random-init pair share the aggregator; only the init and the lr differ
    lpft, scratch = cfgs["lpft"], cfgs["scratch-token"]
    assert str(lpft.init) == "builtin:cpu" and str(scratch.init) == "scratch"
    assert lpft.finetune.aggregator == scratch.finetune.aggregator == "instance"
