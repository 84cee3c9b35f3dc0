"""Export a Mixer to a TF Serving SavedModel, TFLite files or ONNX (built under TensorFlow).

The model is a .keras file saved on any backend (or a checkpoint: .npz, .pth,
.safetensors), or a paper variant with --variant (random weights, or --weights:
a .weights.h5 file or a preset). Every artifact is checked against the Keras
model, then published atomically. Examples:

  keras-mixer export saved-model runs/main/model.keras                 # saved_models/mixer/1/
  keras-mixer export saved-model runs/photos/model.keras               # saved_models/photos/1/
  keras-mixer export all runs/main/model.keras --representative-images calib.npy
  keras-mixer export saved-model --variant B/16 --weights b16.weights.h5 --name mixer_b16
  keras-mixer export saved-model runs/main/model.keras --dtype bfloat16  # bf16 matmuls (AMX CPUs)
  keras-mixer export tflite runs/main/model.keras --modes float32 float16 dynamic_int8
  keras-mixer export tflite model.keras --representative-images data/train --eval-images data/test --table tflite.md
  keras-mixer export onnx runs/main/model.keras                      # needs pip install ".[onnx]"

The name defaults to the one the model's run exports under (the run directory's
config.json: 'mixer' for the main job, else the run directory's name), else
'mixer'. A model with other classes, image size or architecture than the newest
version of that name is refused (--allow-new-task publishes it anyway). Labels
default to the run directory's labels.txt. 'all' is the SavedModel and the TFLite
files.
"""

import contextlib
import os
import tempfile

import keras

from keras_mixer.cli.arguments import positive_float, positive_int
from keras_mixer import deploy
from keras_mixer.deploy import TFLITE_MODES, export_onnx, export_saved_model, export_tflite
from keras_mixer.deploy.saved_model import DTYPES, TOLERANCES
from keras_mixer.deploy.signatures import MAX_IMAGE_PIXELS
from keras_mixer.deploy.tflite import (CALIBRATED_MODES, MIXED_MARGIN, MIXED_MAX_FLOAT_LAYERS, MIXED_TARGET,
                                       markdown_table)
from keras_mixer.files import check_name, disk_full_errors, write_text
from keras_mixer.models import load_model, save_keras_file

ARTIFACTS = ("saved-model", "tflite", "onnx", "all")


def add_arguments(parser):
    parser.add_argument("artifact", choices=ARTIFACTS,
                        help="what to export ('all': SavedModel and TFLite)")
    parser.add_argument("model_path", nargs="?",
                        help="a .keras model file (any backend) or a checkpoint (.npz, .pth, .safetensors)")
    parser.add_argument("--variant", help="paper variant instead of a model file, e.g. B/16")
    parser.add_argument("--weights", help="with --variant: a .weights.h5 file or a preset name")
    parser.add_argument("--num-classes", type=positive_int, help="with --variant (default: 1000)")
    parser.add_argument("--image-size", type=positive_int,
                        help="with --variant: build at this size (default: 224); with a model "
                             "file: move it to this size (the paper's resolution transfer)")
    parser.add_argument("--export-dir", default="saved_models", help="base directory")
    parser.add_argument("--name", help="model name: letters, digits, '_', '-', '.' (default: the "
                                       "model's run's export name, else 'mixer')")
    parser.add_argument("--allow-new-task", action="store_true",
                        help="publish even if the newest version of --name serves other classes, "
                             "image size or architecture")
    parser.add_argument("--version", type=positive_int, help="SavedModel version (default: next free)")
    parser.add_argument("--labels", help="text file with one class name per line (default: the "
                                         "labels.txt beside the model file, if any)")
    parser.add_argument("--top-k", type=positive_int, default=5, help="classes in top_k_* outputs")
    parser.add_argument("--tolerance", type=positive_float,
                        help="largest accepted |export - Keras| on sample inputs (default: 1e-4; "
                             "SavedModel with --dtype bfloat16: 1e-2)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="SavedModel compute dtype (bfloat16: bf16 matmuls, float32 in and "
                             "out; the report gives its drift against float32)")
    parser.add_argument("--max-image-pixels", type=positive_int, default=MAX_IMAGE_PIXELS,
                        help="SavedModel: its signatures refuse larger images, height x width, "
                             "before decoding them (default: %(default)s)")
    parser.add_argument("--modes", nargs="+", default=list(TFLITE_MODES), choices=TFLITE_MODES,
                        help="TFLite modes")
    parser.add_argument("--representative-images",
                        help="calibration images for int8, int16x8 and mixed: a folder of training "
                             "image files or a .npy (n, H, W, 3) 0-255 array")
    parser.add_argument("--eval-images", help="held-out images (folder or .npy) for the TFLite check; "
                                              "a labelled folder (class/*.jpg) also gives accuracy")
    parser.add_argument("--max-calibration-images", type=positive_int, default=256,
                        help="calibration images drawn from a --representative-images folder")
    parser.add_argument("--max-eval-images", type=positive_int, default=1000,
                        help="held-out images drawn from --eval-images")
    parser.add_argument("--mixed-target", type=positive_float, default=MIXED_TARGET,
                        help="mixed: top-1 agreement with the float model, on images held out of "
                             "the calibration images, that the float layers must keep "
                             "(default: %(default)s)")
    parser.add_argument("--mixed-margin", type=float, default=MIXED_MARGIN,
                        help="mixed: agreement kept above --mixed-target on the held-out images, "
                             "for their sampling noise (default: %(default)s)")
    parser.add_argument("--mixed-max-float-layers", type=positive_int, default=MIXED_MAX_FLOAT_LAYERS,
                        help="mixed: at most this many layers stay float (default: %(default)s)")
    parser.add_argument("--num-threads", type=positive_int, default=1, help="TFLite latency threads")
    parser.add_argument("--table", help="also write the TFLite results as a markdown table to this file")


def build_model(args):
    """The model the arguments name, through :func:`keras_mixer.models.load_model`."""
    if (args.model_path is None) == (args.variant is None):
        raise ValueError("Give a model file or --variant (with optional --weights), not both or neither.")
    if args.variant is None:
        if args.weights is not None or args.num_classes is not None:
            raise ValueError("--weights and --num-classes go with --variant; a model file has its own.")
        return load_model(args.model_path, image_size=args.image_size, verbose=False)
    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    if args.image_size is not None:
        kwargs["input_shape"] = (args.image_size, args.image_size, 3)
    if args.weights is None:
        return load_model(args.variant, **kwargs)
    return load_model(args.weights, variant=args.variant, verbose=False, **kwargs)


@contextlib.contextmanager
def export_source(args):
    """What the exporters take: the model under TensorFlow, else a ``.keras`` file of it
    (under JAX or PyTorch the exports run under TensorFlow in a subprocess)."""
    model = build_model(args)
    if keras.backend.backend() == "tensorflow":
        yield model
        return
    with tempfile.TemporaryDirectory(prefix="keras_mixer_export_") as work:
        path = os.path.join(work, "model.keras")
        save_keras_file(model, path)
        yield path


def run(args):
    if os.path.exists(args.export_dir) and not os.path.isdir(args.export_dir):
        raise NotADirectoryError(f"--export-dir {args.export_dir!r} is a file, not a folder: pass "
                                 "a folder (it is created if missing).")
    # A name given is checked as given: an empty one is refused, not replaced by the default.
    if args.model_path is not None:
        args.name = args.name if args.name is not None else deploy.run_export_name(args.model_path)
        args.labels = args.labels or deploy.labels_beside(args.model_path)
    args.name = args.name if args.name is not None else "mixer"
    check_name(args.name, "--name")
    if args.dtype != "float32" and args.artifact not in ("saved-model", "all"):
        raise ValueError(f"--dtype {args.dtype} applies to the SavedModel; TFLite has --modes, "
                         "ONNX is float32.")
    written = []
    training_data = None if args.model_path is None else deploy.run_training_data(args.model_path)
    with disk_full_errors("the export", "nothing half-written was published: free some space "
                                        "and export again"), export_source(args) as model:
        if args.artifact in ("saved-model", "all"):
            written.append(export_saved_model(model, args.export_dir, args.name, args.version,
                                              args.labels, args.top_k, args.tolerance,
                                              dtype=args.dtype, allow_new_task=args.allow_new_task,
                                              training_data=training_data,
                                              max_image_pixels=args.max_image_pixels))
        if args.artifact in ("tflite", "all"):
            modes = [m for m in args.modes if m not in CALIBRATED_MODES or args.representative_images]
            if len(modes) < len(args.modes) and args.modes != list(TFLITE_MODES):
                raise ValueError(f"TFLite modes {', '.join(sorted(set(args.modes) - set(modes)))} need "
                                 "calibration images: pass --representative-images DIR (training images).")
            if len(modes) < len(args.modes):
                print("Skipping TFLite int8, int16x8 and mixed: they need --representative-images.")
            if modes:
                rows = export_tflite(model, args.export_dir, args.name, modes,
                                     args.representative_images, args.eval_images, args.num_threads,
                                     labels=args.labels, max_eval_images=args.max_eval_images,
                                     max_calibration_images=args.max_calibration_images,
                                     mixed_target=args.mixed_target, mixed_margin=args.mixed_margin,
                                     mixed_max_float_layers=args.mixed_max_float_layers,
                                     training_data=training_data)
                written += [row["path"] for row in rows]
                if args.table:
                    write_text(args.table, markdown_table(rows))
                    written.append(args.table)
        if args.artifact == "onnx":
            tolerance = TOLERANCES["float32"] if args.tolerance is None else args.tolerance
            written.append(export_onnx(model, args.export_dir, args.name, tolerance)["path"])
    for path in written:
        print(f"Wrote {path}")
