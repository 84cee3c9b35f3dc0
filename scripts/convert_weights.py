#!/usr/bin/env python
"""`python scripts/convert_weights.py ARGS` is `keras-mixer convert ARGS`; see `--help`."""

import os
import sys

if __name__ == "__main__":
    os.environ["KERAS_MIXER_COMMAND"] = "convert"  # start-up settings before Keras loads (keras_mixer.startup)
    from keras_mixer.cli import main

    sys.exit(main(sys.argv[1:], command="convert", prog="convert_weights.py"))
