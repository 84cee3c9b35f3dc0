"""Classify images with a Mixer served by TF Serving, or by `keras-mixer serve` (gRPC or REST).

Image files are sent encoded (signature serving_bytes, decoded and resized by
the server); a .npy array of (n, H, W, 3) or (H, W, 3) 0-255 pixels goes to
serving_default. Examples:

  keras-mixer predict cat.jpg dog.png                              # gRPC localhost:8500
  keras-mixer predict cat.jpg --protocol rest --server localhost:8501
  keras-mixer predict batch.npy --model mixer --version 2
  keras-mixer predict --metadata                                   # list the signatures
"""

import numpy as np

from keras_mixer.cli.arguments import non_negative_int, positive_float, positive_int
from keras_mixer.deploy import make_client

DEFAULT_SERVERS = {"grpc": "localhost:8500", "rest": "localhost:8501"}


def add_arguments(parser):
    parser.add_argument("inputs", nargs="*", help="image files (JPEG/PNG/BMP/GIF) or one .npy array")
    parser.add_argument("--server", help="host:port (default localhost:8500 gRPC, localhost:8501 REST)")
    parser.add_argument("--protocol", choices=sorted(DEFAULT_SERVERS), default="grpc")
    parser.add_argument("--model", default="mixer", help="served model name")
    parser.add_argument("--version", type=non_negative_int, help="model version (default: latest)")
    parser.add_argument("--version-label", help="model version label, e.g. stable")
    parser.add_argument("--timeout", type=positive_float, default=10.0, help="seconds per request")
    parser.add_argument("--top-k", type=positive_int, default=5, help="classes to print per image")
    parser.add_argument("--metadata", action="store_true", help="print the model's signatures")


def load_array(path):
    """Pixels from a ``.npy`` file, never unpickled; a clear error naming the file otherwise."""
    try:
        images = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"Array file not found: {path}") from None
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise ValueError(f"{path} holds Python objects (an object array), which are never "
                             "unpickled: save numeric pixels, (n, H, W, 3) in 0-255.") from None
        raise ValueError(f"Cannot read {path} as a .npy array: {error}") from None
    except (OSError, EOFError) as error:
        raise ValueError(f"Cannot read {path} as a .npy array: {error}") from None
    if images.dtype.kind not in "iuf":
        raise ValueError(f"{path} holds {images.dtype} values; expected numeric pixels in 0-255.")
    if images.ndim not in (3, 4) or images.shape[-1] != 3:
        raise ValueError(f"{path} has shape {images.shape}; expected (n, H, W, 3) or (H, W, 3).")
    return images


def read_inputs(inputs):
    """``(images for the client, one name per image)``."""
    arrays = [name for name in inputs if name.lower().endswith(".npy")]
    if not arrays:
        return list(inputs), list(inputs)
    if len(inputs) > 1:
        raise ValueError(f"A .npy array must be the only input; got {len(inputs)} inputs.")
    images = load_array(arrays[0])
    count = len(images) if images.ndim == 4 else 1
    return images, [f"{arrays[0]}[{i}]" for i in range(count)]


def run(args):
    if not args.inputs and not args.metadata:
        raise ValueError("Give image files or a .npy array to classify, or --metadata.")
    images, names = read_inputs(args.inputs)  # bad files fail before any request
    client = make_client(args.server or DEFAULT_SERVERS[args.protocol], args.protocol,
                         model=args.model, version=args.version,
                         version_label=args.version_label, timeout=args.timeout)
    if args.metadata:
        for name, signature in client.metadata().items():
            print(f"{name}: inputs {signature['inputs']} -> outputs {signature['outputs']}")
    if not args.inputs:
        return
    for name, prediction in zip(names, client.predict(images)):
        ranked = list(zip(prediction.labels or prediction.classes, prediction.scores))
        print(f"{name}: " + ", ".join(f"{label} {score:.3f}" for label, score in ranked[:args.top_k]))
