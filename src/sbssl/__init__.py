"""sbssl: slice-based self-supervised ViTs (GMML) for knee MRI.

The Python API (`sbssl.api`) and the building blocks a training loop of one's own reaches for, imported on first
use, so that `import sbssl` (and the command line's argument checks) stay fast without torch:

    encoder, pre = sbssl.load_encoder("builtin:cpu")
    model = sbssl.load_model("runs/demo/finetune-gmml")
    model.predict("knee.nii.gz")
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    # the pipeline: the functions the CLI calls
    "load_encoder": "sbssl.api", "load_model": "sbssl.api", "ExamClassifier": "sbssl.api",
    "pretrain": "sbssl.api", "finetune": "sbssl.api", "evaluate": "sbssl.api", "synthesize": "sbssl.api",
    "load_config": "sbssl.config", "load_volume": "sbssl.data.volume_io", "Preprocessing": "sbssl.data.preprocessing",
    # building blocks
    "GroupMasking": "sbssl.masking", "MaskedL1Loss": "sbssl.models.gmml", "GMMLAutoencoder": "sbssl.models.gmml",
    "SliceClassifier": "sbssl.models.slice_classifier", "create_encoder": "sbssl.models.vit",
    "SynthSpec": "sbssl.synth.dataset", "render_exam": "sbssl.synth.exam",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sbssl' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
