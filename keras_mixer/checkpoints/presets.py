"""Named pretrained weights: which preset exists for which variant, where it lives, how it sees images.

Official checkpoints (``.npz``, Flax layout) are published by the paper's
authors at ``https://storage.googleapis.com/mixer_models/<preset>/Mixer-<V>_<P>.npz``
(``vit_jax`` README). The ``miil_*`` weights are the Alibaba-MIIL ImageNet-21K-P
models as released by timm (``timm/models/mlp_mixer.py``, ``mixer_b16_224.miil_*``).
All were trained at 224 x 224.

Two ways to name one:

- by variant and short name, as ``weights=`` has always taken them
  (``MixerB16(weights="imagenet21k")``: :data:`PRESETS`);
- by a full name that fixes the variant too (``load_model("mixer_b16_imagenet21k")``,
  timm's tags such as ``"mixer_b16_224.goog_in21k_ft_in1k"``: :data:`NAMED_PRESETS`).
  timm's tags live on the Hugging Face Hub (``handle``: ``hf://timm/<tag>``) and are
  downloaded by :mod:`keras_mixer.checkpoints.hub` with ``huggingface_hub``.

Each preset carries how its weights see images (``crop_fraction``, ``interpolation``,
``mean``/``std`` on [0, 1] pixels) and which GELU they were trained with: the official
code resizes whole images to [-1, 1] with tanh GELU; timm evaluates at crop 0.875,
bicubic (bilinear for ``miil``), with exact erf GELU (timm's ``pretrained_cfg``).

Files are downloaded once into the Keras cache (:func:`cache_directory`) under a
temporary name, checked, and only then renamed to their cache name, so a killed
download never poisons the cache. The check: the file's sha256 where it is known
(``Preset.sha256``, else the leading hex digits that timm's file names carry,
``...-2a558a71.pth``: torch.hub's ``check_hash`` convention), else the CRCs of
the ``.npz`` zip archive. A cached file that fails the check is downloaded again.
"""

import dataclasses
import hashlib
import os
import posixpath
import re
import tempfile
import uuid
import warnings
import zipfile
import zlib

import keras

from keras_mixer.config import OFFICIAL_MEAN, OFFICIAL_STD, canonical_variant, model_name
from keras_mixer.files import describe_contents, remove_stale_temps, temp_prefix

OFFICIAL_URL = "https://storage.googleapis.com/mixer_models/{preset}/Mixer-{size}_{patch}.npz"
TIMM_RELEASES = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-tresnet/"
HF_PREFIX = "hf://"
TIMM_HF_URL = "https://huggingface.co/timm/{tag}"
CACHE_SUBDIR = "keras_mixer"
# torch.hub's convention (``HASH_REGEX``): ``name-<first 8+ hex digits of the sha256>.ext``.
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")


class DownloadError(OSError):
    """A preset's file could not be downloaded (offline, moved) or arrived corrupt.

    The message gives the URL and the cache path where a file downloaded by hand
    is picked up; nothing corrupt is cached.

    Examples:
        >>> issubclass(keras_mixer.DownloadError, OSError)
        True
        >>> def pretrained_or_random(variant, **kwargs):
        ...     try:
        ...         return keras_mixer.get_model(variant, weights="imagenet1k", **kwargs)
        ...     except keras_mixer.DownloadError as error:   # offline: say why, go on
        ...         print(error)
        ...         return keras_mixer.get_model(variant, **kwargs)
    """


@dataclasses.dataclass(frozen=True)
class Preset:
    """One downloadable checkpoint."""

    name: str
    variant: str
    url: str
    num_classes: int
    description: str
    image_size: int = 224
    # The GELU the weights were trained with (official: tanh; timm-trained: exact erf).
    approximate_gelu: bool = True
    # The file's full sha256 (hex) where its publisher states one; None: not known here.
    sha256: str = None
    # How the weights see images: the eval crop and resize filter, and the input
    # normalisation (per channel, on [0, 1] pixels): official [-1, 1]; miil [0, 1].
    crop_fraction: float = 1.0
    interpolation: str = "bilinear"
    mean: tuple = OFFICIAL_MEAN
    std: tuple = OFFICIAL_STD
    # A hub handle (``hf://timm/<tag>``) for files a hub client downloads; None: ``url``.
    handle: str = None

    @property
    def config_fields(self):
        """The :class:`~keras_mixer.config.ModelConfig` fields these weights need to be used as trained."""
        return dict(approximate_gelu=self.approximate_gelu, crop_fraction=self.crop_fraction,
                    interpolation=self.interpolation, input_mean=tuple(self.mean),
                    input_std=tuple(self.std), num_classes=self.num_classes)

    @property
    def file_name(self):
        """Name of the file in the Keras cache (unique across presets)."""
        base = posixpath.basename(self.url)
        return base if self.name.startswith("miil") else f"{self.name}_{base}"

    @property
    def sha256_prefix(self):
        """The leading hex digits of the file's sha256 that can be checked (``None``: none known).

        The full ``sha256`` when given; else the digits in a timm file name.
        """
        if self.sha256:
            return self.sha256.lower()
        match = _HASH_IN_NAME.search(posixpath.basename(self.url))
        return match.group(1) if match else None


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
# timm's pretrained_cfg for its Mixers (timm/models/mlp_mixer.py, ``_cfg``): eval crop 0.875,
# bicubic, mean = std = 0.5; the miil weights: bilinear, mean 0 and std 1 ([0, 1] pixels).
TIMM_EVAL = dict(crop_fraction=0.875, interpolation="bicubic", approximate_gelu=False)
MIIL_EVAL = dict(TIMM_EVAL, interpolation="bilinear", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
# timm's tags on the Hugging Face Hub (hf_hub_id "timm/"): (variant, classes, description, eval).
_TIMM_HF = {
    "mixer_b16_224.goog_in21k_ft_in1k": (
        "B/16", 1000, "Google's ImageNet-21k pre-training, fine-tuned on ImageNet-1k (timm)",
        TIMM_EVAL),
    "mixer_b16_224.goog_in21k": ("B/16", 21843, "Google's ImageNet-21k pre-training (timm)",
                                 TIMM_EVAL),
    "mixer_l16_224.goog_in21k_ft_in1k": (
        "L/16", 1000, "Google's ImageNet-21k pre-training, fine-tuned on ImageNet-1k (timm)",
        TIMM_EVAL),
    "mixer_l16_224.goog_in21k": ("L/16", 21843, "Google's ImageNet-21k pre-training (timm)",
                                 TIMM_EVAL),
    "mixer_b16_224.miil_in21k": ("B/16", 11221, _MIIL["miil_in21k"][2], MIIL_EVAL),
    "mixer_b16_224.miil_in21k_ft_in1k": ("B/16", 1000, _MIIL["miil_in21k_ft_in1k"][2], MIIL_EVAL),
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
            name, "B/16", TIMM_RELEASES + file_name, num_classes, description, **MIIL_EVAL)
    return presets


def _build_named_presets():
    """Full names: ``mixer_<variant>_<official preset>`` and timm's tags."""
    named = {f"{model_name(variant)}_{name}": dataclasses.replace(preset, name=name)
             for (variant, name), preset in PRESETS.items() if name in _OFFICIAL}
    for tag, (variant, num_classes, description, evaluation) in _TIMM_HF.items():
        named[tag] = Preset(tag, variant, TIMM_HF_URL.format(tag=tag), num_classes, description,
                            handle=f"{HF_PREFIX}timm/{tag}", **evaluation)
    return named


PRESETS = _build_presets()
PRESET_NAMES = tuple(dict.fromkeys(name for _, name in PRESETS))
NAMED_PRESETS = _build_named_presets()


def is_preset_name(weights):
    """Whether ``weights`` looks like a preset name rather than a file path."""
    return isinstance(weights, str) and weights.lower() in PRESET_NAMES


def is_named_preset(source):
    """Whether ``source`` is a full preset name (``"mixer_b16_imagenet21k"``, a timm tag)."""
    return isinstance(source, str) and source.lower() in NAMED_PRESETS


def named_preset(name):
    """The :class:`Preset` of a full name; a clear error listing them when it does not exist."""
    key = str(name).lower()
    if key not in NAMED_PRESETS:
        raise ValueError(f"Unknown preset {name!r}. Presets: {', '.join(NAMED_PRESETS)}.")
    return NAMED_PRESETS[key]


def available_presets(variant=None):
    """Short preset names (``weights=`` of a variant), all or those published for ``variant``.

    Args:
        variant: a paper variant (``"B/16"``, ``"b16"``, ...); ``None`` for every name.

    Returns:
        A tuple of names such as ``"imagenet1k"``, for ``MixerB16(weights=...)``.

    Raises:
        ValueError: an unknown variant.

    Examples:
        >>> keras_mixer.available_presets("S/32")
        ('gsam',)
        >>> "imagenet1k" in keras_mixer.available_presets("B/16")
        True
    """
    if variant is None:
        return PRESET_NAMES
    variant = canonical_variant(variant)
    return tuple(name for v, name in PRESETS if v == variant)


def preset_names():
    """Every full preset name (:data:`NAMED_PRESETS`): ``load_model(name)`` builds and loads it.

    Returns:
        A tuple of names such as ``"mixer_b16_224.goog_in21k_ft_in1k"`` (timm's)
        and ``"mixer_b16_imagenet1k"``, each a model with its weights (downloaded
        on first use).

    Examples:
        >>> names = keras_mixer.preset_names()
        >>> "mixer_b16_224.goog_in21k_ft_in1k" in names, "mixer_s32_gsam" in names
        (True, True)
    """
    return tuple(NAMED_PRESETS)


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


def cache_directory():
    """The folder of downloaded presets: ``$KERAS_HOME/keras_mixer``, by default ``~/.keras/keras_mixer``.

    The folder ``keras.utils.get_file`` uses, with its fallback to ``/tmp/.keras``
    when the Keras home is not writable.
    """
    home = os.environ.get("KERAS_HOME")
    if not home:
        user = os.path.expanduser("~")
        home = os.path.join(user if os.access(user, os.W_OK) else "/tmp", ".keras")
    home = os.path.expanduser(home)
    try:
        os.makedirs(home, exist_ok=True)  # as Keras makes its home when imported
    except OSError:
        pass
    if not os.access(home, os.W_OK):
        home = os.path.join("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir(), ".keras")
    return os.path.join(home, CACHE_SUBDIR)


def cached_path(preset):
    """Where ``preset``'s file is (or will be) in the cache; a file put there by hand is used."""
    return os.path.join(cache_directory(), preset.file_name)


def check_file(preset, path):
    """What is wrong with a downloaded or cached file of ``preset``, or ``None`` when it checks out."""
    prefix = preset.sha256_prefix
    try:
        if prefix:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            got = digest.hexdigest()
            if not got.startswith(prefix):
                return f"its sha256 starts with {got[:len(prefix)]}, the published file's with {prefix}"
            return None
        if not zipfile.is_zipfile(path):  # the official .npz files are zip archives
            return f"it {describe_contents(path)}"
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        return None if bad is None else f"its member {bad!r} fails its CRC check"
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        return f"it cannot be read: {error}"


def download_preset(preset):
    """Local path of ``preset``'s file, checked; downloaded once into the Keras cache.

    Raises:
        DownloadError: the download failed (the message gives the URL and the
            cache path where a file downloaded by hand is picked up) or the
            downloaded file does not check out (nothing is cached then).
    """
    path = cached_path(preset)
    corrupt = None
    if os.path.isfile(path):
        corrupt = check_file(preset, path)
        if corrupt is None:
            return path
        warnings.warn(f"The cached file {path} of the {preset.name!r} weights is corrupt "
                      f"({corrupt}); downloading it again.", stacklevel=3)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    remove_stale_temps(directory)  # what killed downloads left
    temp = os.path.join(directory, f"{temp_prefix()}{uuid.uuid4().hex[:8]}-{preset.file_name}")
    try:
        try:
            keras.utils.get_file(os.path.basename(temp), preset.url, cache_subdir=directory,
                                 file_hash=preset.sha256)
        except Exception as error:  # get_file raises a bare Exception for URL failures
            raise DownloadError(_download_failed(preset, path, error, corrupt)) from error
        problem = check_file(preset, temp)
        if problem is not None:
            raise DownloadError(
                f"Downloaded {preset.url}, but the file is corrupt ({problem}); nothing was "
                "cached. Try again; if it persists, download the file by hand and put it at "
                f"{path}."
            )
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)
    return path


def _download_failed(preset, path, error, corrupt):
    lines = [
        f"Could not download the {preset.name!r} weights of Mixer-{preset.variant} from "
        f"{preset.url}: {error}",
        f"Offline? Download that URL on another machine and copy the file to {path} "
        "(the Keras cache: $KERAS_HOME/keras_mixer/, by default ~/.keras/keras_mixer/); "
        "it is picked up from there.",
    ]
    if corrupt:
        lines.append(f"The file there now is corrupt ({corrupt}): replace it.")
    return "\n".join(lines)
