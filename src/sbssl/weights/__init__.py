"""Pretrained GMML encoders shipped with the package (no download, ever).

`cpu`: ViT-T with a convolutional stem and 4 px patches on the 32 px region of interest of sagittal slices
(recipe `pretrain/cpu`: 24 epochs, then extended to 44; masked L1 0.354), pretrained on 1,130 synthetic knees
drawn with seed 1 (the demo draws seed 0), labels unused. Made by `tools/make_cpu_encoder.sh`; stored in half
precision (11 MB).
Fine-tuning takes it as `init=builtin:cpu`.

    python -m sbssl.weights export RUN/encoder.safetensors   # -> src/sbssl/weights/gmml_cpu.safetensors
"""

from __future__ import annotations

import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

HERE = Path(__file__).parent
BUILTIN = {"cpu": HERE / "gmml_cpu.safetensors"}


def builtin_path(name: str) -> Path:
    """`builtin:NAME` -> the shipped file; an unknown name is a one-line error."""
    from sbssl.errors import SbsslError

    if name not in BUILTIN:
        raise SbsslError(f"init=builtin:{name}: no such shipped encoder (have: {', '.join(BUILTIN)})")
    if not BUILTIN[name].is_file():
        raise SbsslError(f"{BUILTIN[name]}: shipped encoder missing from this installation")
    return BUILTIN[name]


def export(src: Path, name: str = "cpu") -> Path:
    """Copy an encoder.safetensors in half precision (its metadata kept) to the package's weights folder."""
    from safetensors import safe_open

    with safe_open(str(src), "pt") as f:
        meta = f.metadata() or {}
    sd = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in load_file(str(src)).items()}
    save_file(sd, str(BUILTIN[name]), metadata={**meta, "stored_dtype": "float16"})
    return BUILTIN[name]


def _main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[0] != "export":
        raise SystemExit("usage: python -m sbssl.weights export ENCODER.safetensors")
    out = export(Path(argv[1]))
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    _main(sys.argv[1:])
