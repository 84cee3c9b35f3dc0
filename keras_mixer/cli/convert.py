"""Convert MLP-Mixer weights between formats, and save or fetch presets.

Reads an official .npz (Linen or legacy layout), a timm .pth/.safetensors state dict,
a .keras model, a handle (a preset name such as mixer_b16_224.goog_in21k_ft_in1k, a
preset folder, hf://OWNER/REPO, kaggle://OWNER/MODEL/FRAMEWORK/VARIATION[/VERSION]:
the model its publisher evaluated, preprocessing included), or a short preset /
.weights.h5 file (with --variant); builds the matching Keras Mixer (architecture read
off the checkpoint's shapes) and writes a Keras .weights.h5 or .keras file, an
official .npz / timm .safetensors / .pth, or, for an OUTPUT without a suffix, a preset
folder (keras-hub's layout: keras_mixer.load_model and keras-hub load it; share it
with keras_hub.upload_preset or huggingface_hub.upload_folder). Prints what was
loaded. Examples:

  keras-mixer convert Mixer-B_16.npz mixer_b16.keras
  keras-mixer convert mixer_b16_224_miil_in21k-2a558a71.pth mixer.weights.h5 --exact-gelu
  keras-mixer convert Mixer-B_16.npz mixer_b16_448.keras --image-size 448
  keras-mixer convert imagenet21k mixer_b16_i21k.keras --variant B/16
  keras-mixer convert hf://timm/mixer_b16_224.goog_in21k_ft_in1k mixer_b16.keras
  keras-mixer convert runs/main/model.keras my_mixer_preset/
"""

import os

from keras_mixer.checkpoints import formats, is_handle, save_weights
from keras_mixer.cli.arguments import positive_int
from keras_mixer.models import load_model, model_from_checkpoint, save_keras_file
from keras_mixer.sharing import save_to_preset

OUTPUT_SUFFIXES = (formats.KERAS_MODEL_SUFFIXES + formats.KERAS_WEIGHTS_SUFFIXES
                   + formats.CHECKPOINT_SUFFIXES)


def add_arguments(parser):
    parser.add_argument("input", help="checkpoint (.npz, .pth, .safetensors, .keras), preset name "
                                      "or folder, hf:// or kaggle:// handle")
    parser.add_argument("output", help="output file: .weights.h5, .keras, .npz, .safetensors or .pth; "
                                       "a name without suffix: a preset folder")
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
    preset = not os.path.splitext(args.output.rstrip("/" + os.sep))[1]
    if not preset and not formats.has_suffix(args.output, OUTPUT_SUFFIXES):
        raise ValueError(f"Unsupported output {args.output!r}: use .keras or .weights.h5 (Keras), "
                         ".npz (official), .safetensors / .pth (timm), or a folder name without "
                         "a suffix (a preset).")
    if formats.has_suffix(args.input, formats.CHECKPOINT_SUFFIXES) or is_handle(args.input):
        model, summary = model_from_checkpoint(args.input, image_size=args.image_size, verbose=False,
                                               **model_options(args))
    else:
        model, summary = load_model(args.input, variant=args.variant, image_size=args.image_size,
                                    verbose=False, **model_options(args)), None
    if preset:
        save_to_preset(model, args.output, class_names=summary.class_names if summary else None)
    elif formats.has_suffix(args.output, formats.KERAS_MODEL_SUFFIXES):
        save_keras_file(model, args.output)
    else:
        save_weights(model, args.output)
    height, width = model.config.image_size
    print(f"Model {model.name}: input {height}x{width}, {model.count_params():,} parameters.")
    if summary is not None:
        print(summary)
    print(f"Wrote {args.output}")
