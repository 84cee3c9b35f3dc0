"""Write an image folder once as TFRecord shards (a TFDS dataset) for fast training starts.

Reads FOLDER as `keras-mixer train --data FOLDER` does (root/class/* or
root/train/class/* and root/test/class/*: the same images, labels and order),
checks every image once with the training pipeline's decoder (skipping, and
listing, those it cannot read), and writes their bytes unchanged into OUT as
TFDS's TFRecord shards with TFDS metadata. `keras-mixer train --data OUT` then
starts without scanning or checking anything, and each host of a multi-host job
reads only its own shards. Re-running a killed command goes on where it stopped
(OUT.partial/ holds the shards written so far); OUT appears only when complete.
Examples:

  keras-mixer prepare photos/ photos-records/
  keras-mixer train --data photos-records/ --image-size 224 --variant B/16
"""

from keras_mixer import records
from keras_mixer.data import BAD_IMAGES


def add_arguments(parser):
    parser.add_argument("folder", help="image folder (class folders, or train/ and test/ with class folders)")
    parser.add_argument("out", help="output folder for the records (must not exist, or be an "
                                    "earlier run's output for the same images)")
    parser.add_argument("--bad-images", choices=BAD_IMAGES, default="skip",
                        help="skip undecodable images (listed) or fail listing them (default: skip)")
    parser.add_argument("--shard-mb", type=float, default=records.SHARD_BYTES / 2**20,
                        help="about this many MiB of images per shard (default: %(default)s)")


def run(args):
    if not args.shard_mb > 0:
        raise ValueError(f"--shard-mb must be positive, got {args.shard_mb}.")
    records.prepare(args.folder, args.out, bad_images=args.bad_images,
                    shard_bytes=int(args.shard_mb * 2**20), log=print)
