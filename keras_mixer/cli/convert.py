"""Convert MLP-Mixer weights between formats.

Reads an official .npz (Linen or legacy layout), a timm .pth/.safetensors state dict,
a .keras model, or a preset / .weights.h5 file (with --variant); builds the matching
Keras Mixer (architecture read off the checkpoint's shapes) and writes a Keras
.weights.h5 or .keras file, or an official .npz / timm .safetensors / .pth.
Prints what was loaded. Examples:

  keras-mixer convert Mixer-B_16.npz mixer_b16.keras
  keras-mixer convert mixer_b16_224_miil_in21k-2a558a71.pth mixer.weights.h5 --exact-gelu
  keras-mixer convert Mixer-B_16.npz mixer_b16_448.keras --image-size 448
  keras-mixer convert imagenet21k mixer_b16_i21k.keras --variant B/16
"""

from keras_mixer.checkpoints import formats, save_weights
from keras_mixer.cli.arguments import positive_int
from keras_mixer.models import load_model, model_from_checkpoint, save_keras_file

OUTPUT_SUFFIXES = (formats.KERAS_MODEL_SUFFIXES + formats.KERAS_WEIGHTS_SUFFIXES
                   + formats.CHECKPOINT_SUFFIXES)


def add_arguments(parser):
    parser.add_argument("input", help="checkpoint (.npz, .pth, .safetensors, .keras) or preset name")
    parser.add_argument("output", help="output file: .weights.h5, .keras, .npz, .safetensors or .pth")
    parser.add_argument("--variant", help="paper variant (e.g. B/16) for presets and .weights.h5 input")
    parser.add_argument("--image-size", type=positive_int,
                        help="build at this image size (integer multiple of the checkpoint's): "
                             "block-diagonal token-mixing init (paper Appendix C)")
    parser.add_argument("--num-classes", type=positive_int,
                        help="head size (default: the checkpoint's; another size keeps a fresh head)")
    parser.add_argument("--no-top", action="store_true", help="drop the classification head")
    parser.add_argument("--exact-gelu", action="store_true",
                        help="exact erf GELU (timm-trained weights); default: tanh GELU (official)")
    parser.add_argument("--no-preprocessing", action="store_true",
                        help="model without the built-in [-1, 1] pixel scaling")


def model_options(args):
    """The :class:`~keras_mixer.MlpMixer` arguments the flags ask for."""
    options = {}
    if args.num_classes is not None:
        options["num_classes"] = args.num_classes
    if args.no_top:
        options["include_top"] = False
    if args.exact_gelu:
        options["approximate_gelu"] = False
    if args.no_preprocessing:
        options["include_preprocessing"] = False
    return options


def run(args):
    if not formats.has_suffix(args.output, OUTPUT_SUFFIXES):
        raise ValueError(f"Unsupported output {args.output!r}: use .keras or .weights.h5 (Keras), "
                         ".npz (official) or .safetensors / .pth (timm).")
    if formats.has_suffix(args.input, formats.CHECKPOINT_SUFFIXES):  # the load summary is printed
        model, summary = model_from_checkpoint(args.input, image_size=args.image_size, verbose=False,
                                               **model_options(args))
    else:
        model, summary = load_model(args.input, variant=args.variant, image_size=args.image_size,
                                    verbose=False, **model_options(args)), None
    if formats.has_suffix(args.output, formats.KERAS_MODEL_SUFFIXES):
        save_keras_file(model, args.output)
    else:
        save_weights(model, args.output)
    height, width = model.config.image_size
    print(f"Model {model.name}: input {height}x{width}, {model.count_params():,} parameters.")
    if summary is not None:
        print(summary)
    print(f"Wrote {args.output}")
