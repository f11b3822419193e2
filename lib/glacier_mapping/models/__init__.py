"""Models: GlaViTU, the DeepLabv3+ baseline, presets and original-weight import."""
