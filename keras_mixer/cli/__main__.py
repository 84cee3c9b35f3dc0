"""``python -m keras_mixer.cli COMMAND ...``."""

import sys

from keras_mixer.cli import main

sys.exit(main())
