#!/usr/bin/env python
"""Convert MLP-Mixer weights between formats.

Reads an official .npz (Linen or legacy layout), a timm .pth/.safetensors state dict,
or a preset (with --variant); builds the matching Keras Mixer (architecture read off
the checkpoint's shapes) and writes a Keras .weights.h5 or .keras file, or an
official .npz / timm .safetensors / .pth. Prints what was loaded.

  python scripts/convert_weights.py Mixer-B_16.npz mixer_b16.keras
  python scripts/convert_weights.py mixer_b16_224_miil_in21k-2a558a71.pth mixer.weights.h5 --exact-gelu
  python scripts/convert_weights.py Mixer-B_16.npz mixer_b16_448.keras --image-size 448
  python scripts/convert_weights.py imagenet21k mixer_b16_i21k.keras --variant B/16
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="checkpoint (.npz, .pth, .safetensors, .keras) or preset name")
    parser.add_argument("output", help="output file: .weights.h5, .keras, .npz, .safetensors or .pth")
    parser.add_argument("--variant", help="paper variant (e.g. B/16) for presets and .weights.h5 input")
    parser.add_argument("--image-size", type=int,
                        help="build at this image size (integer multiple of the checkpoint's): "
                             "block-diagonal token-mixing init (paper Appendix C)")
    parser.add_argument("--num-classes", type=int,
                        help="head size (default: the checkpoint's; another size keeps a fresh head)")
    parser.add_argument("--no-top", action="store_true", help="drop the classification head")
    parser.add_argument("--exact-gelu", action="store_true",
                        help="exact erf GELU (timm-trained weights); default: tanh GELU (official)")
    parser.add_argument("--no-preprocessing", action="store_true",
                        help="model without the built-in [-1, 1] pixel scaling")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from keras_mixer import weights

    kwargs = {}
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    if args.no_top:
        kwargs["include_top"] = False
    if args.exact_gelu:
        kwargs["approximate_gelu"] = False
    if args.no_preprocessing:
        kwargs["include_preprocessing"] = False
    model, summary = weights.build_model(args.input, variant=args.variant,
                                         image_size=args.image_size, verbose=False,
                                         **kwargs)
    weights.save_model_or_weights(model, args.output)
    grid = model.input.shape[1:3]
    print(f"Model {model.name}: input {grid[0]}x{grid[1]}, {model.count_params():,} parameters.")
    if summary is not None:
        print(summary)
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
