"""The embedded synthetic knee MRI set: a procedural 3-D phantom in MRNet-v1.0 layout."""

from sbssl.synth.dataset import SynthSpec, assign_labels, generate
from sbssl.synth.exam import Exam, Labels, render_exam

__all__ = ["Exam", "Labels", "SynthSpec", "assign_labels", "generate", "render_exam"]
