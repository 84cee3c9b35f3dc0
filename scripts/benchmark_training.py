#!/usr/bin/env python
"""`python scripts/benchmark_training.py ARGS` is `keras-mixer benchmark training ARGS`; see `--help`."""

import os
import sys

if __name__ == "__main__":
    os.environ["KERAS_MIXER_COMMAND"] = "benchmark"  # start-up settings before Keras loads (keras_mixer.startup)
    from keras_mixer.cli import main

    sys.exit(main(["training", *sys.argv[1:]], command="benchmark", prog="keras-mixer benchmark"))
