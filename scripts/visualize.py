#!/usr/bin/env python
"""Pictures of a trained MLP-Mixer.

tokens:  the learned token-mixing weights of chosen blocks drawn on the patch grid,
         one picture per hidden unit of the first token-mixing Dense (paper Fig. 5).
gallery: image files with the model's top-k classes.

  python scripts/visualize.py tokens Mixer-B_16.npz --blocks 0 1 -1 --out tokens.png
  python scripts/visualize.py gallery imagenet1k --variant B/16 --out gallery.png a.jpg b.jpg
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("tokens", "token-mixing weights on the patch grid (Fig. 5)"),
                            ("gallery", "predictions for image files")):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("weights", help="checkpoint (.npz, .pth, .safetensors, .keras) or preset name")
        sub.add_argument("--variant", help="paper variant (e.g. B/16) for presets and .weights.h5 files")
        sub.add_argument("--out", required=True, help="output .png")
    tokens, gallery = commands.choices["tokens"], commands.choices["gallery"]
    tokens.add_argument("--blocks", type=int, nargs="+", default=[0, -1],
                        help="block indices (negative from the end); default: first and last")
    tokens.add_argument("--units", type=int, default=64, help="hidden units per block (0: all)")
    tokens.add_argument("--columns", type=int, default=16, help="pictures per row")
    tokens.add_argument("--unsorted", action="store_true", help="keep the units' order "
                        "(default: sorted from low to high spatial frequency)")
    gallery.add_argument("images", nargs="+", help="image files")
    gallery.add_argument("--top", type=int, default=3, help="classes shown per image")
    gallery.add_argument("--columns", type=int, default=4, help="images per row")
    gallery.add_argument("--miil", action="store_true",
                         help="[0, 1] input scaling (timm miil weights) for models without preprocessing")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from keras_mixer import visualize, weights

    model, _ = weights.build_model(args.weights, variant=args.variant, verbose=False)
    if args.command == "tokens":
        visualize.plot_token_mixing(model, args.out, blocks=args.blocks,
                                    num_units=args.units or None, columns=args.columns,
                                    sort_by_frequency=not args.unsorted)
    else:
        visualize.plot_predictions(model, args.images, args.out, top=args.top,
                                   columns=args.columns, mode="miil" if args.miil else "mixer")
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
