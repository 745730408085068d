"""sbssl.weights: an encoder is judged and shipped in one form (half precision, its record kept)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sbssl.weights import builtin_path, shipped_copy


def test_shipped_copy_rounds_floats_to_half_and_keeps_the_record(tmp_path: Path):
    src = tmp_path / "encoder.safetensors"
    w = torch.randn(64, 16) * 3
    save_file({"w": w, "steps": torch.arange(5)}, str(src), metadata={"preprocessing": '{"roi": "acl"}'})
    out = shipped_copy(src, tmp_path / "sub" / "shipped.safetensors")
    got = load_file(str(out))
    assert got["w"].dtype == torch.float16 and torch.equal(got["w"], w.half())
    assert not torch.equal(got["w"].float(), w)  # the rounding a candidate is judged under is real
    assert torch.equal(got["steps"], torch.arange(5))  # integers untouched
    with safe_open(str(out), "pt") as f:
        assert f.metadata() == {"preprocessing": '{"roi": "acl"}', "stored_dtype": "float16"}
    assert [p.name for p in out.parent.iterdir()] == ["shipped.safetensors"]  # no temp file left


def test_the_shipped_encoder_is_its_own_shipped_copy(tmp_path: Path):
    """Rounding the shipped file again changes nothing: a candidate equal to it is judged as the shipped arm."""
    src = builtin_path("cpu")
    again = load_file(str(shipped_copy(src, tmp_path / "again.safetensors")))
    ref = load_file(str(src))
    assert again.keys() == ref.keys() and all(torch.equal(again[k], ref[k]) for k in ref)
