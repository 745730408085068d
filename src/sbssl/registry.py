"""Registries of interchangeable parts, by name, known before torch loads.

As timm's `register_model`, a part is one registry entry; unlike it, an entry may name
its object lazily ("module:attribute"), so the configuration checks a name (and the CLI
refuses a typo) in well under a second, without importing the torch modules that
define the parts. The config's allowed values come from here (`sbssl.config.choices`).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any


class Registry(Mapping[str, Any]):
    """Names -> parts. A string value "pkg.module:attr" is imported on first lookup; other values are kept as
    given. `register` adds one (also as a decorator), so a user's own aggregator is one call away."""

    def __init__(self, key: str, entries: Mapping[str, Any] | None = None, lazy: bool = True):
        """`key`: the config key whose values these names are; `lazy=False` keeps strings as plain values."""
        self.key, self.lazy = key, lazy
        self._entries: dict[str, Any] = dict(entries or {})

    def register(self, name: str, obj: Any = None) -> Any:
        """`REG.register("name", obj)`, or `@REG.register("name")` over a class or function."""
        if obj is None:
            return lambda o: self.register(name, o)
        if name in self._entries:
            raise ValueError(f"{self.key}: {name!r} is registered already")
        self._entries[name] = obj
        return obj

    def __getitem__(self, name: str) -> Any:
        if name not in self._entries:
            raise KeyError(f"{self.key}: unknown {name!r} (known: {', '.join(self._entries)})")
        value = self._entries[name]
        if self.lazy and isinstance(value, str) and ":" in value:
            module, attr = value.split(":")
            value = self._entries[name] = getattr(importlib.import_module(module), attr)
        return value

    def __contains__(self, name: object) -> bool:  # Mapping's would look the entry up (and import it)
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)


_CLASSIFIER = "sbssl.models.slice_classifier"

# stage 2: how the slices' features become one exam feature (finetune.aggregator)
AGGREGATORS = Registry("finetune.aggregator", {
    "concat": f"{_CLASSIFIER}:ConcatAggregator", "max": f"{_CLASSIFIER}:MaxAggregator",
    "mean": f"{_CLASSIFIER}:MeanAggregator", "attention": f"{_CLASSIFIER}:AttentionAggregator",
    "instance": f"{_CLASSIFIER}:InstanceAggregator"})
# the slice encoders (model.name): the ViTs by their timm architecture, the CNNs by their class
VITS = Registry("model.name", {"vit_tiny": "vit_tiny_patch16_224", "vit_small": "vit_small_patch16_224",
                               "vit_base": "vit_base_patch16_224"}, lazy=False)
CNNS = Registry("model.name", {"mrnet_cnn": f"{_CLASSIFIER}:MRNetCNN",
                               "resnet18": "sbssl.models.resnet:ResNet18Encoder"})
# a ViT's patch stem (model.stem): None keeps timm's linear patchify
STEMS = Registry("model.stem", {"patch": None, "conv": "sbssl.models.vit:conv_stem"})
# a ViT's slice feature (finetune.slice_feature) -> timm's global pool
SLICE_FEATURES = Registry("finetune.slice_feature", {"cls": "token", "max": "max", "mean": "avg"}, lazy=False)
# GMML's replacements of a masked group (mask.type): fill(x, draw, masking) -> values like x
MASK_REPLACEMENTS = Registry("mask.type", {k: f"sbssl.masking:fill_{k}" for k in ("zeros", "ones", "noise", "image")})
# experiment loggers (trainer.loggers): make(root, name, resume_step) -> a Lightning Fabric logger
LOGGERS = Registry("trainer.loggers", {k: f"sbssl.engine.run_log:{k}_logger" for k in ("csv", "tensorboard", "mlflow")})
