#!/usr/bin/env python
"""Classify images with a Mixer served by TF Serving (gRPC or REST).

Examples:
  python scripts/predict.py cat.jpg dog.png                              # gRPC localhost:8500
  python scripts/predict.py cat.jpg --protocol rest --server localhost:8501
  python scripts/predict.py batch.npy --model mixer --version 2          # (n, H, W, 3) 0-255 array
  python scripts/predict.py --metadata                                   # list the signatures
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_mixer import serving  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", help="image files (JPEG/PNG/...) or one .npy array")
    parser.add_argument("--server", help="host:port (default localhost:8500 gRPC, localhost:8501 REST)")
    parser.add_argument("--protocol", choices=["grpc", "rest"], default="grpc")
    parser.add_argument("--model", default="mixer", help="served model name")
    parser.add_argument("--version", type=int, help="model version (default: latest)")
    parser.add_argument("--version-label", help="model version label, e.g. stable")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    parser.add_argument("--top-k", type=int, default=5, help="classes to print per image")
    parser.add_argument("--metadata", action="store_true", help="print the model's signatures")
    args = parser.parse_args(argv)
    if not args.inputs and not args.metadata:
        parser.error("give image files / a .npy array, or --metadata")

    server = args.server or ("localhost:8500" if args.protocol == "grpc" else "localhost:8501")
    client = serving.make_client(server, args.protocol, model=args.model, version=args.version,
                                 version_label=args.version_label, timeout=args.timeout)
    try:
        if args.metadata:
            for name, signature in client.metadata().items():
                print(f"{name}: inputs {signature['inputs']} -> outputs {signature['outputs']}")
        if not args.inputs:
            return
        if len(args.inputs) == 1 and args.inputs[0].endswith(".npy"):
            import numpy as np

            images = np.load(args.inputs[0], allow_pickle=False)
            names = [f"{args.inputs[0]}[{i}]" for i in range(len(images) if images.ndim == 4 else 1)]
        else:
            images, names = list(args.inputs), list(args.inputs)
        for name, prediction in zip(names, client.predict(images)):
            ranked = zip(prediction.labels or prediction.classes, prediction.scores)
            top = ", ".join(f"{label} {score:.3f}" for label, score in list(ranked)[:args.top_k])
            print(f"{name}: {top}")
    except serving.ServingError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
