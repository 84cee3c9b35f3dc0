#!/usr/bin/env python
"""Benchmark a Mixer on JAX, TensorFlow and PyTorch: img/s, peak memory, fraction of matmul rate.

Examples:
    python scripts/benchmark.py --quick                      # B/16, batch 2, all backends
    python scripts/benchmark.py --batch-sizes 16 --dtypes float32 bfloat16 --out results/b16
    python scripts/benchmark.py --config 8,2,32,16,64 --image-size 32 --quick --backends jax
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_mixer.benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
