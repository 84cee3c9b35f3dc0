"""Evaluate a .keras model, a SavedModel or a .tflite file on a labelled image folder.

Each artifact runs the way it is used: a .keras model through the training
evaluation pipeline, a SavedModel through its serving_bytes signature (exactly
what TF Serving computes), a .tflite file through the TFLite interpreter; all
prepare pixels by the same image policy. The images scored are FOLDER's held-out
split, as training makes it: FOLDER/test/ (val/, validation/) when it has
train/test splits, else every 10th image of FOLDER/<class>/<image> (--split all:
every image). The first line says which split is scored, and a warning says how
many of them the model trained on, when its run recorded its data. The last line
printed is `top-1 X top-5 Y on N images` (top-3 for 3 classes). Examples:

  keras-mixer evaluate runs/main/model.keras --data photos/
  keras-mixer evaluate saved_models/mixer --data photos/ --out predictions.csv
  keras-mixer evaluate saved_models/mixer.float32.tflite --data photos/

--crop-fraction and --interpolation default to the .keras model's own
(config.crop_fraction, config.interpolation: a preset's, e.g. 0.875 and bicubic for
timm's Mixers); a SavedModel's are baked into its signature and a .tflite file's
are recorded beside it (NAME.MODE.tflite.json): another value is an error.
"""

from keras_mixer.cli.arguments import positive_float, positive_int
from keras_mixer.config import INTERPOLATIONS
from keras_mixer.evaluate import SPLITS, evaluate


def add_arguments(parser):
    parser.add_argument("artifact", help="a .keras file, a SavedModel directory (NAME/VERSION, or "
                                         "NAME for its highest version) or a .tflite file")
    parser.add_argument("--data", required=True, metavar="FOLDER",
                        help="labelled images: FOLDER/<class>/<image>, or FOLDER/test/<class>/<image>")
    parser.add_argument("--crop-fraction", type=positive_float, default=None,
                        help="central-square crop before resizing (default: the model's own)")
    parser.add_argument("--interpolation", choices=INTERPOLATIONS, default=None,
                        help="resize filter (default: the model's own)")
    parser.add_argument("--out", metavar="CSV",
                        help="write path,label,prediction,score per image to this CSV file")
    parser.add_argument("--batch-size", type=positive_int, default=32,
                        help="images per model call (default: 32)")
    parser.add_argument("--split", choices=SPLITS, default="test",
                        help="test: the held-out split, as training makes it (default); train; "
                             "all: every image of a folder without train/ and test/")


def run(args):
    evaluate(args.artifact, args.data, crop_fraction=args.crop_fraction, out=args.out,
             batch_size=args.batch_size, interpolation=args.interpolation, split=args.split)
