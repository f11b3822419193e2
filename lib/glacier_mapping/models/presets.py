"""Model size presets: widths and depths only, never the structure."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Preset:
    """Widths and depths of GlaViTU and DeepLabv3+.

    Attributes:
        fusion_filters: Filters of the fusion block (and of the shared 'stem' width).
        vit_patch: ViT patch size in pixels (a power of two; the SETR decoder has log2 of it
            upsampling steps); the model patch size must be a multiple of it.
        vit_dim: Token embedding size.
        vit_depth: Number of transformer blocks.
        vit_heads: Attention heads (``vit_dim`` must be divisible by it).
        vit_mlp: Hidden size of the transformer MLP.
        decoder_filters: Filters of the SETR progressive-upsampling decoder.
        unet_filters: Filters of the first residual U-Net level (doubled per level).
        unet_steps: Down-sampling steps of the residual U-Net.
        dropout: Dropout rate (spatial in conv blocks, plain in the transformer MLP).
        resnet_filters: Base width of the DeepLab ResNet backbone's bottleneck (x4 outputs).
        resnet_blocks: Bottleneck blocks per backbone stage (4 stages).
        aspp_filters: Filters of ASPP and of the DeepLabv3+ decoder.
        aspp_rates: Dilation rates of the ASPP branches.
    """

    fusion_filters: int
    vit_patch: int
    vit_dim: int
    vit_depth: int
    vit_heads: int
    vit_mlp: int
    decoder_filters: int
    unet_filters: int
    unet_steps: int
    dropout: float
    resnet_filters: int
    resnet_blocks: tuple[int, int, int, int]
    aspp_filters: int
    aspp_rates: tuple[int, int, int]

    def __post_init__(self) -> None:
        """Check the values that the builders rely on."""
        if self.vit_patch < 2 or self.vit_patch & (self.vit_patch - 1):
            raise ValueError(f"vit_patch={self.vit_patch} must be a power of two >= 2.")
        if self.vit_dim % self.vit_heads:
            raise ValueError(
                f"vit_dim={self.vit_dim} must be divisible by vit_heads={self.vit_heads}."
            )

    def to_dict(self) -> dict:
        """Plain dictionary (for model cards)."""
        return asdict(self)


PRESETS: dict[str, Preset] = {
    # The original study's sizes (about 10.03 M parameters for optical + DEM at 384 px).
    "paper": Preset(
        fusion_filters=64, vit_patch=16, vit_dim=64, vit_depth=12, vit_heads=4, vit_mlp=256,
        decoder_filters=64, unet_filters=64, unet_steps=3, dropout=0.1,
        resnet_filters=64, resnet_blocks=(3, 4, 23, 3), aspp_filters=256, aspp_rates=(6, 12, 18),
    ),
    # CPU "quick" profile: about 0.6 M parameters, most of them in the low-resolution U-Net
    # levels; the full-resolution layers are narrow so a 2-core CPU trains it in minutes.
    "small": Preset(
        fusion_filters=16, vit_patch=8, vit_dim=32, vit_depth=2, vit_heads=4, vit_mlp=64,
        decoder_filters=16, unet_filters=16, unet_steps=3, dropout=0.1,
        resnet_filters=8, resnet_blocks=(1, 2, 2, 1), aspp_filters=32, aspp_rates=(2, 4, 6),
    ),
    # 'smoke' profile and tests: as fast as possible.
    "tiny": Preset(
        fusion_filters=8, vit_patch=8, vit_dim=16, vit_depth=1, vit_heads=2, vit_mlp=16,
        decoder_filters=8, unet_filters=8, unet_steps=2, dropout=0.1,
        resnet_filters=4, resnet_blocks=(1, 1, 1, 1), aspp_filters=8, aspp_rates=(1, 2, 3),
    ),
}


def get_preset(name: str) -> Preset:
    """Look a preset up by name.

    Raises:
        ValueError: if the name is unknown.
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown model preset {name!r}; choose one of {sorted(PRESETS)}.")
    return PRESETS[name]
