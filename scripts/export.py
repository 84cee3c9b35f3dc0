#!/usr/bin/env python
"""Export a Mixer to a TF Serving SavedModel and/or TFLite files (runs under TensorFlow).

Examples:
  python scripts/export.py saved-model runs/model.keras --labels labels.txt
  python scripts/export.py all runs/model.keras --representative-images calib.npy
  python scripts/export.py saved-model --variant B/16 --weights b16.weights.h5 --name mixer_b16
  python scripts/export.py tflite runs/model.keras --modes float32 float16 dynamic_int8
"""

import os
import sys

# The export graph is built by the TensorFlow backend, whatever trained the model.
os.environ["KERAS_BACKEND"] = "tensorflow"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_mixer import export  # noqa: E402

if __name__ == "__main__":
    export.main(description=__doc__)
