"""Train an MLP-Mixer with model.fit on JAX, TensorFlow or PyTorch (one flag per setting).

With no arguments this is the main job: a small Mixer on scikit-learn's bundled
digits (offline, real data) on the CPU, >= 95% test accuracy in a few minutes,
saved under runs/main/ and exported to saved_models/mixer/ (the name that
`keras-mixer serve` and `keras-mixer predict` use by default). Every other run
exports under its run directory's name, and needs a run directory of its own:
re-running a command resumes its run directory. Examples:

  keras-mixer train                                     # main job (= python scripts/train.py)
  keras-mixer train --backend jax --cpu-devices 2 --run-dir runs/jax   # 2-device data parallel
  keras-mixer train --data photos --run-dir runs/photos --flip         # your folder: photos/<class>/*.jpg
  keras-mixer train --data cifar10 --run-dir runs/cifar10 --flip --randaug-magnitude 10 --mixup-alpha 0.2
  torchrun --nproc-per-node 2 scripts/train.py --backend torch   # torch, 2 processes
"""

import argparse
import dataclasses

from keras_mixer.files import disk_full_errors
from keras_mixer.training import TrainConfig, train

_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def add_arguments(parser):
    """Every field of :class:`TrainConfig` as a ``--flag`` (booleans also as ``--no-flag``)."""
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        kind = _TYPES[field.type if isinstance(field.type, str) else field.type.__name__]
        help_text = f"{field.metadata.get('help', '')} (default: {field.default})"
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction,
                                default=field.default, help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=field.default, help=help_text)


def config_from_args(args):
    """The :class:`TrainConfig` of parsed arguments."""
    return TrainConfig(**{field.name: getattr(args, field.name)
                          for field in dataclasses.fields(TrainConfig)})


def run(args):
    config = config_from_args(args)
    with disk_full_errors(f"the run's files in {config.run_dir}",
                          "every file is written atomically, so the run keeps its last whole "
                          "epoch: free some space and run the same command again to resume it"):
        train(config)
