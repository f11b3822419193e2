"""glacier_mapping: a reproducible re-derivation of GlaViTU glacier mapping (Maslov et al.)."""

__version__ = "0.1.0"
