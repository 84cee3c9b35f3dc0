#!/usr/bin/env python
"""`python scripts/prepare.py ARGS` is `keras-mixer prepare ARGS`; see `--help`."""

import os
import sys

if __name__ == "__main__":
    os.environ["KERAS_MIXER_COMMAND"] = "prepare"  # start-up settings before Keras loads (keras_mixer.startup)
    from keras_mixer.cli import main

    sys.exit(main(sys.argv[1:], command="prepare", prog="prepare.py"))
