"""Pictures of a Mixer: token-mixing weights on the patch grid (paper Fig. 5) and predictions."""

import math
import os

import keras
import numpy as np

from keras_mixer import images as image_policy
from keras_mixer.deploy import signatures
from keras_mixer.files import atomic_output
from keras_mixer.imagenet import decode_predictions, preprocess_input


def token_mixing_units(model, block=0, sort_by_frequency=True):
    """The first token-mixing Dense of ``block`` as pictures ``(D_S, H/P, W/P)``.

    Hidden unit ``u`` reads token ``t`` with weight ``dense_0.kernel[t, u]``; tokens are the
    patch grid in row-major order, so each unit's weights form an ``H/P x W/P`` image.
    With ``sort_by_frequency`` units go from smooth to high-frequency patterns
    (mean spatial frequency of their 2-D spectrum), as in the paper's figure.

    Args:
        model: a ``keras_mixer.MlpMixer``.
        block: index of the block (negative counts from the end).
        sort_by_frequency: order the units from smooth to high-frequency
            (else in the kernel's order).

    Returns:
        A float64 NumPy array ``(D_S, H/P, W/P)``: one picture per hidden unit.

    Raises:
        ValueError: ``block`` is out of range.

    Examples:
        >>> from keras_mixer import visualize
        >>> model = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3))
        >>> visualize.token_mixing_units(model, block=-1).shape    # D_S = 16 units on a 4 x 4 grid
        (16, 4, 4)
    """
    blocks = model.blocks
    if not -len(blocks) <= block < len(blocks):
        raise ValueError(f"Block {block} out of range: the model has {len(blocks)} blocks.")
    kernel = keras.ops.convert_to_numpy(blocks[block].token_mixing.dense_0.kernel)
    units = np.asarray(kernel, np.float64).T.reshape(-1, *model.config.grid)
    if sort_by_frequency:
        units = units[np.argsort(_mean_frequency(units), kind="stable")]
    return units


def _mean_frequency(units):
    spectrum = np.abs(np.fft.fft2(units - units.mean(axis=(1, 2), keepdims=True)))
    fy = np.abs(np.fft.fftfreq(units.shape[1]))[:, None]
    fx = np.abs(np.fft.fftfreq(units.shape[2]))[None, :]
    radius = np.sqrt(fy**2 + fx**2)
    return (spectrum * radius).sum(axis=(1, 2)) / np.maximum(spectrum.sum(axis=(1, 2)), 1e-12)


def plot_token_mixing(model, path, blocks=(0,), num_units=64, columns=16, sort_by_frequency=True):
    """Save a PNG of token-mixing hidden units, one row group per block (paper Fig. 5).

    Each small picture is one hidden unit of the first token-mixing Dense drawn on
    the patch grid, red positive and blue negative, scaled per unit.

    Args:
        model: a Mixer built by this package.
        path: output ``.png`` (written atomically).
        blocks: block indices to draw (negative counts from the end).
        num_units: units per block (the first ones after sorting); ``None`` for all.
        columns: pictures per row.
        sort_by_frequency: order the units from smooth to high-frequency, as the paper.

    Returns:
        ``path``.

    Raises:
        ValueError: a block index is out of range.

    Examples:
        >>> from keras_mixer import visualize
        >>> model = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3))
        >>> path = os.path.join(tempfile.mkdtemp(), "units.png")
        >>> visualize.plot_token_mixing(model, path, blocks=(0, 1), num_units=8, columns=8) == path
        True
        >>> os.path.getsize(path) > 0
        True
    """
    from matplotlib.figure import Figure

    all_units = [token_mixing_units(model, b, sort_by_frequency) for b in blocks]
    totals = [len(u) for u in all_units]
    all_units = [u if num_units is None else u[:num_units] for u in all_units]
    rows_per_block = [math.ceil(len(u) / columns) for u in all_units]
    grid_h, grid_w = all_units[0].shape[1:]
    cell = 0.6 * max(1.0, grid_w / grid_h)
    fig = Figure(figsize=(columns * cell, sum(rows_per_block) * cell * grid_h / grid_w
                          + 0.35 * len(blocks)))
    subfigs = fig.subfigures(len(blocks), 1, height_ratios=rows_per_block, squeeze=False)[:, 0]
    for subfig, block, units, total, rows in zip(subfigs, blocks, all_units, totals,
                                                 rows_per_block):
        subfig.suptitle(f"block {block}: token-mixing units ({len(units)} of {total})", fontsize=9)
        axes = subfig.subplots(rows, columns, squeeze=False, gridspec_kw=dict(wspace=0.05, hspace=0.05))
        for ax in axes.flat:
            ax.set_axis_off()
        for ax, unit in zip(axes.flat, units):
            limit = max(np.abs(unit).max(), 1e-12)
            ax.imshow(unit, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    return _save(fig, path)


def _save(fig, path):
    with atomic_output(path) as temp_path:
        fig.savefig(temp_path, format="png", dpi=100)
    return os.fspath(path)


def predict_images(model, paths, top=5, mode="mixer", batch_size=16, labels=None):
    """Top-``top`` ``(class_id, name, score)`` per image file, and the images (0-255).

    Files are prepared by the image policy (:mod:`keras_mixer.images`), as the
    serving signatures do. ``mode="miil"`` scales pixels to [0, 1] for models
    built with ``include_preprocessing=False`` (timm's ``miil`` weights);
    ``"mixer"`` uses the exported interface (:func:`signatures.probability_model`).

    Args:
        model: a ``keras_mixer.MlpMixer`` with its head.
        paths: an image file, or a list of them (JPEG, PNG, BMP or GIF).
        top: classes per image.
        mode: ``"mixer"`` or ``"miil"`` (see above).
        batch_size: images per model call.
        labels: the class names in output order (see
            :func:`keras_mixer.decode_predictions`).

    Returns:
        ``(predictions, images)``: one list of ``(class_id, name, score)`` per
        file, best first, and the prepared images ``(n, H, W, 3)``, 0-255 floats.

    Raises:
        ValueError: a model without head, or no images.

    Examples:
        >>> from keras_mixer import visualize
        >>> folder = tempfile.mkdtemp()
        >>> paths = [os.path.join(folder, name) for name in ("noise.png", "grey.png")]
        >>> keras.utils.save_img(paths[0], np.random.default_rng(0).uniform(0, 255, (40, 48, 3)))
        >>> keras.utils.save_img(paths[1], np.full((64, 64, 3), 128.0))
        >>> model = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3),
        ...                              num_classes=2)
        >>> predictions, images = visualize.predict_images(model, paths, top=2,
        ...                                                labels=["cat", "dog"])
        >>> [(name, round(score, 2)) for _, name, score in predictions[0]]  # a zero head: 50/50
        [('cat', 0.5), ('dog', 0.5)]
        >>> images.shape                    # both resized to the model's 32 x 32
        (2, 32, 32, 3)
    """
    config = model.config
    if not config.include_top:
        raise ValueError("Predictions need a model with its classification head (include_top=True).")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not len(paths):
        raise ValueError("No images given: pass at least one image file.")
    images = image_policy.load_files(paths, config.image_size, config.crop_fraction,
                                     config.interpolation)
    signatures.check_images(images)
    if mode == "miil" and not config.include_preprocessing:
        scores = model.predict(preprocess_input(images, mode="miil"), batch_size=batch_size, verbose=0)
    else:
        scores = signatures.keras_probabilities(model, images, batch_size=batch_size)
    return decode_predictions(scores, top=top, labels=labels), images


def plot_predictions(model, image_paths, path, top=3, columns=4, mode="mixer", labels=None):
    """Save a PNG gallery: each image with its top-``top`` classes and scores.

    Args:
        model: a Mixer with its head.
        image_paths: JPEG, PNG, BMP or GIF files; prepared by the image policy.
        path: output ``.png`` (written atomically).
        top: classes shown per image.
        columns: images per row.
        mode: input scaling for models without built-in preprocessing
            (see :func:`keras_mixer.preprocess_input`).
        labels: class names in output order (default: ImageNet-1k's for 1000
            classes, else class indices).

    Returns:
        ``path``.

    Raises:
        ValueError: a model without head, or no images.

    Examples:
        >>> from keras_mixer import visualize
        >>> folder = tempfile.mkdtemp()
        >>> paths = [os.path.join(folder, name) for name in ("noise.png", "grey.png")]
        >>> keras.utils.save_img(paths[0], np.random.default_rng(0).uniform(0, 255, (40, 48, 3)))
        >>> keras.utils.save_img(paths[1], np.full((64, 64, 3), 128.0))
        >>> model = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3),
        ...                              num_classes=2)
        >>> path = os.path.join(folder, "gallery.png")
        >>> visualize.plot_predictions(model, paths, path, top=2, labels=["cat", "dog"]) == path
        True
    """
    from matplotlib.figure import Figure

    predictions, images = predict_images(model, image_paths, top=top, mode=mode, labels=labels)
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    fig = Figure(figsize=(3.2 * columns, (3.2 + 0.22 * top) * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, image, preds, image_path in zip(axes.flat, images, predictions, image_paths):
        ax.imshow(image.astype("uint8"))
        lines = [os.path.basename(image_path)]
        lines += [f"{name.split(',')[0][:28]}: {score:.3f}" for _, name, score in preds]
        ax.set_title("\n".join(lines), fontsize=8, loc="left")
    fig.tight_layout()
    return _save(fig, path)
