"""Pictures of a trained MLP-Mixer.

tokens:  the learned token-mixing weights of chosen blocks drawn on the patch grid,
         one picture per hidden unit of the first token-mixing Dense (paper Fig. 5).
gallery: image files with the model's top-k classes, named by --labels (default: the
         labels.txt of the model's run directory; ImageNet names for 1000 classes).

  keras-mixer visualize tokens Mixer-B_16.npz --blocks 0 1 -1 --out tokens.png
  keras-mixer visualize gallery imagenet1k --variant B/16 --out gallery.png a.jpg b.jpg
"""

import os

from keras_mixer import deploy, visualize
from keras_mixer.cli.arguments import non_negative_int, positive_int
from keras_mixer.models import load_model


def add_arguments(parser):
    views = parser.add_subparsers(dest="view", required=True, metavar="{tokens,gallery}")
    tokens = views.add_parser("tokens", help="token-mixing weights on the patch grid (Fig. 5)")
    gallery = views.add_parser("gallery", help="predictions for image files")
    for sub in (tokens, gallery):
        sub.add_argument("weights", help="checkpoint (.npz, .pth, .safetensors, .keras) or preset name")
        sub.add_argument("--variant", help="paper variant (e.g. B/16) for presets and .weights.h5 files")
        sub.add_argument("--out", required=True, help="output .png")
    tokens.add_argument("--blocks", type=int, nargs="+", default=[0, -1],
                        help="block indices (negative from the end); default: first and last")
    tokens.add_argument("--units", type=non_negative_int, default=64,
                        help="hidden units per block (0: all)")
    tokens.add_argument("--columns", type=positive_int, default=16, help="pictures per row")
    tokens.add_argument("--unsorted", action="store_true", help="keep the units' order "
                        "(default: sorted from low to high spatial frequency)")
    gallery.add_argument("images", nargs="+", help="image files")
    gallery.add_argument("--top", type=positive_int, default=3, help="classes shown per image")
    gallery.add_argument("--labels", help="text file with one class name per line (default: the "
                                          "labels.txt beside a .keras file, if any)")
    gallery.add_argument("--columns", type=positive_int, default=4, help="images per row")
    gallery.add_argument("--miil", action="store_true",
                         help="[0, 1] input scaling (timm miil weights) for models without preprocessing")


def run(args):
    model = load_model(args.weights, variant=args.variant, verbose=False)
    if args.view == "tokens":
        visualize.plot_token_mixing(model, args.out, blocks=args.blocks,
                                    num_units=args.units or None, columns=args.columns,
                                    sort_by_frequency=not args.unsorted)
    else:
        labels = args.labels or (deploy.labels_beside(args.weights) if os.path.isfile(args.weights)
                                 else None)
        visualize.plot_predictions(model, args.images, args.out, top=args.top,
                                   columns=args.columns, mode="miil" if args.miil else "mixer",
                                   labels=deploy.read_labels(labels))
    print(f"Wrote {args.out}")
