"""sbssl: slice-based self-supervised ViTs (GMML) for knee MRI."""
__version__ = "0.1.0"
