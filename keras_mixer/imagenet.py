"""ImageNet input scaling and class names.

The models scale pixels themselves by default (``include_preprocessing=True``);
:func:`preprocess_input` is for models built with ``include_preprocessing=False``.
The 1000 ImageNet-1k class names ship with the package (``resources/imagenet1k_classes.tsv``,
from ``tensorflow-datasets``, see ``resources/README.md``); no download happens.
"""

import functools
import os

import numpy as np

RESOURCES_DIR = os.path.join(os.path.dirname(__file__), "resources")
SCALINGS = {
    "mixer": (1.0 / 127.5, -1.0),  # official: [-1, 1]
    "miil": (1.0 / 255.0, 0.0),  # timm's Alibaba-MIIL weights: [0, 1]
}


def preprocess_input(x, mode="mixer"):
    """Scale 0-255 pixels for a model built with ``include_preprocessing=False``.

    Args:
        x: images ``(..., height, width, 3)`` with values in [0, 255]: a NumPy
            array (a float32 array is returned) or a backend tensor.
        mode: ``"mixer"`` (official weights): ``x / 127.5 - 1``, in [-1, 1];
            ``"miil"`` (the ``miil_*`` presets): ``x / 255``, in [0, 1].

    Returns:
        The scaled images, float32, of the shape of ``x``: a NumPy array for
        NumPy input, else a backend tensor.

    Raises:
        ValueError: an unknown ``mode``.

    Examples:
        >>> keras_mixer.preprocess_input(np.array([0, 127.5, 255]))
        array([-1.,  0.,  1.], dtype=float32)
        >>> keras_mixer.preprocess_input(np.array([0, 255]), mode="miil")
        array([0., 1.], dtype=float32)
    """
    if mode not in SCALINGS:
        raise ValueError(f"mode must be one of {', '.join(SCALINGS)}, got {mode!r}.")
    scale, offset = SCALINGS[mode]
    if isinstance(x, (np.ndarray, list, tuple, int, float)):
        return np.asarray(x, np.float32) * np.float32(scale) + np.float32(offset)
    import keras

    x = keras.ops.cast(x, "float32")
    return x * scale + offset


@functools.lru_cache(maxsize=None)
def imagenet1k_classes():
    """``(wordnet_ids, names)``: the 1000 ImageNet-1k classes in class-index order.

    Read from the package's data (no download), once.

    Returns:
        Two tuples of 1000 strings: WordNet ids (``"n01440764"``) and class names.

    Raises:
        RuntimeError: the package's class list is damaged.

    Examples:
        >>> ids, names = keras_mixer.imagenet.imagenet1k_classes()
        >>> len(names), ids[0], names[0]
        (1000, 'n01440764', 'tench, Tinca tinca')
    """
    with open(os.path.join(RESOURCES_DIR, "imagenet1k_classes.tsv"), encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    if len(rows) != 1000:
        raise RuntimeError(f"Corrupt package data: {len(rows)} ImageNet-1k classes, expected 1000.")
    return tuple(r[0] for r in rows), tuple(r[1] for r in rows)


def decode_predictions(preds, top=5, labels=None):
    """The ``top`` classes of each prediction, as ``keras.applications`` does.

    Args:
        preds: scores ``(batch, num_classes)`` (probabilities or logits).
        top: how many classes per sample.
        labels: class names in output order (a model trained on your own
            folders: its run directory's ``labels.txt``); default: ImageNet-1k's
            for 1000 classes, else the class index as text.

    Returns:
        One list per sample of ``(class_id, class_name, score)``, best first.
        With ``labels`` both are the label. Otherwise, for 1000 classes ``class_id`` is the WordNet id (``"n01440764"``) and the
        name the ImageNet-1k one; for other heads (e.g. the 21,843 ImageNet-21k
        classes, whose names are not shipped) both are the class index as text.

    Raises:
        ValueError: ``preds`` is not 2-D, or ``labels`` has another length.

    Examples:
        >>> scores = np.zeros((1, 1000))
        >>> scores[0, [1, 2]] = 0.6, 0.3
        >>> [(wordnet_id, name.split(",")[0], score)
        ...  for wordnet_id, name, score in keras_mixer.decode_predictions(scores, top=2)[0]]
        [('n01443537', 'goldfish', 0.6), ('n01484850', 'great white shark', 0.3)]
        >>> keras_mixer.decode_predictions(np.array([[0.2, 0.8]]), top=1, labels=["cat", "dog"])
        [[('dog', 'dog', 0.8)]]
    """
    preds = np.asarray(preds)
    if preds.ndim != 2:
        raise ValueError(f"decode_predictions expects (batch, num_classes) scores, got {preds.shape}.")
    num_classes = preds.shape[1]
    if labels is not None:
        if len(labels) != num_classes:
            raise ValueError(f"Got {len(labels)} labels for {num_classes} classes.")
        ids = names = tuple(str(label) for label in labels)
    elif num_classes == 1000:
        ids, names = imagenet1k_classes()
    else:
        ids = names = tuple(str(i) for i in range(num_classes))
    top = min(int(top), num_classes)
    results = []
    for row in preds:
        best = np.argsort(-row, kind="stable")[:top]
        results.append([(ids[i], names[i], float(row[i])) for i in best])
    return results
