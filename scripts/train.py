#!/usr/bin/env python
"""Train an MLP-Mixer with model.fit on JAX, TensorFlow or PyTorch (one flag per setting).

With no arguments this is the main job: a small Mixer on scikit-learn's bundled
digits (offline, real data) on the CPU, >= 95% test accuracy in a few minutes,
saved under runs/main/ and exported to saved_models/. Re-running a command
resumes its run directory. Examples:

  python scripts/train.py                                     # main job
  python scripts/train.py --backend jax --cpu-devices 2       # 2-device data parallel
  python scripts/train.py --data cifar10 --flip --randaug-magnitude 10 --mixup-alpha 0.2
  torchrun --nproc-per-node 2 scripts/train.py --backend torch   # torch, 2 processes
"""

import argparse
import dataclasses
import os
import sys


def set_backend(argv):
    """Apply --backend and --cpu-devices to the environment before Keras is imported."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--backend", choices=("jax", "tensorflow", "torch"))
    early.add_argument("--cpu-devices", type=int, default=0)
    known, _ = early.parse_known_args(argv)
    if known.backend:
        os.environ["KERAS_BACKEND"] = known.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if known.cpu_devices > 1:
        # JAX fixes its device count at import: ask for N host devices first.
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={known.cpu_devices}")


def parse_args(argv=None):
    """Every field of TrainConfig as a --flag (booleans also as --no-flag)."""
    from keras_mixer.training import TrainConfig

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=("jax", "tensorflow", "torch"),
                        help="Keras backend (default: $KERAS_BACKEND or Keras' default)")
    types = {"int": int, "float": float, "str": str, "bool": bool}
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        kind = types[field.type if isinstance(field.type, str) else field.type.__name__]
        help_text = f"{field.metadata.get('help', '')} (default: {field.default})"
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction,
                                default=field.default, help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=field.default, help=help_text)
    args = vars(parser.parse_args(argv))
    args.pop("backend")
    return TrainConfig(**args)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    set_backend(argv)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from keras_mixer.training import train

    train(parse_args(argv))


if __name__ == "__main__":
    main()
