"""Named pretrained weights: which preset exists for which variant, and where it lives.

Official checkpoints (``.npz``, Flax layout) are published by the paper's
authors at ``https://storage.googleapis.com/mixer_models/<preset>/Mixer-<V>_<P>.npz``
(``vit_jax`` README). The ``miil_*`` weights are the Alibaba-MIIL ImageNet-21K-P
models as released by timm (``timm/models/mlp_mixer.py``, ``mixer_b16_224.miil_*``).
All were trained at 224 x 224.
"""

import dataclasses
import posixpath

from keras_mixer.config import canonical_variant

OFFICIAL_URL = "https://storage.googleapis.com/mixer_models/{preset}/Mixer-{size}_{patch}.npz"
TIMM_RELEASES = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-tresnet/"
CACHE_SUBDIR = "keras_mixer"


@dataclasses.dataclass(frozen=True)
class Preset:
    """One downloadable checkpoint."""

    name: str
    variant: str
    url: str
    num_classes: int
    description: str
    image_size: int = 224
    # Pixel scaling the weights were trained with: "mixer" is [-1, 1]; "miil" is [0, 1].
    input_scaling: str = "mixer"
    # The GELU the weights were trained with (official: tanh; timm-trained: exact erf).
    approximate_gelu: bool = True

    @property
    def file_name(self):
        """Name of the file in the Keras cache (unique across presets)."""
        base = posixpath.basename(self.url)
        return base if self.name.startswith("miil") else f"{self.name}_{base}"


_OFFICIAL = {
    "imagenet1k": (("B/16", "L/16"), 1000, "ImageNet-1k pre-training (paper Table 3)"),
    "imagenet21k": (("B/16", "L/16"), 21843, "ImageNet-21k pre-training, 21k head"),
    "sam": (("B/16", "B/32"), 1000, "ImageNet-1k with the SAM optimizer"),
    "gsam": (("S/16", "S/32", "B/16", "B/32"), 1000, "ImageNet-1k with the GSAM optimizer"),
}
_MIIL = {
    "miil_in21k": ("mixer_b16_224_miil_in21k-2a558a71.pth", 11221,
                   "Alibaba-MIIL ImageNet-21K-P pre-training (timm), 11221 classes"),
    "miil_in21k_ft_in1k": ("mixer_b16_224_miil-9229a591.pth", 1000,
                           "Alibaba-MIIL ImageNet-21K-P, fine-tuned on ImageNet-1k (timm)"),
}


def _build_presets():
    presets = {}
    for name, (variants, num_classes, description) in _OFFICIAL.items():
        for variant in variants:
            size, patch = variant.split("/")
            url = OFFICIAL_URL.format(preset=name, size=size, patch=patch)
            presets[(variant, name)] = Preset(name, variant, url, num_classes, description)
    for name, (file_name, num_classes, description) in _MIIL.items():
        presets[("B/16", name)] = Preset(
            name, "B/16", TIMM_RELEASES + file_name, num_classes, description,
            input_scaling="miil", approximate_gelu=False,
        )
    return presets


PRESETS = _build_presets()
PRESET_NAMES = tuple(dict.fromkeys(name for _, name in PRESETS))


def is_preset_name(weights):
    """Whether ``weights`` looks like a preset name rather than a file path."""
    return isinstance(weights, str) and weights.lower() in PRESET_NAMES


def available_presets(variant=None):
    """Preset names, all or those published for ``variant``."""
    if variant is None:
        return PRESET_NAMES
    variant = canonical_variant(variant)
    return tuple(name for v, name in PRESETS if v == variant)


def get_preset(variant, name):
    """The :class:`Preset` ``name`` of ``variant``; a clear error when it does not exist."""
    variant = canonical_variant(variant)
    name = str(name).lower()
    if name not in PRESET_NAMES:
        raise ValueError(
            f"Unknown weights preset {name!r}. Presets: {', '.join(PRESET_NAMES)}; "
            "or pass a path to a .npz, .pth, .safetensors or .weights.h5 file."
        )
    if (variant, name) not in PRESETS:
        have = available_presets(variant)
        which = [v for v, n in PRESETS if n == name]
        raise ValueError(
            f"No {name!r} weights were published for Mixer-{variant} (they exist for "
            f"{', '.join('Mixer-' + v for v in which)}). Presets for Mixer-{variant}: "
            f"{', '.join(have) if have else 'none'}."
        )
    return PRESETS[(variant, name)]


def download_preset(preset):
    """Local path of a preset's file, downloaded once into the Keras cache."""
    import keras

    return keras.utils.get_file(preset.file_name, preset.url, cache_subdir=CACHE_SUBDIR)
