"""Make a small labelled folder of synthetic "photos" for the documentation's examples.

Every image is drawn here (NumPy and Pillow), none is taken from a data set: a
circle, a square or a triangle of random size, position and colour on a noisy
background of another colour, saved as a JPEG. The classes are the folder names.

  python examples/make_photos.py photos              # photos/<class>/<n>.jpg, 40 per class
  python examples/make_photos.py photos --per-class 100 --size 96
  python examples/make_photos.py --samples examples  # the files shipped in examples/

--samples writes what the repository ships: examples/images/ (one picture per
class and a drawn digit, for predict and the gallery) and examples/labels.txt.
"""

import argparse
import os

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle")


def draw(shape, size, rng):
    """One ``size`` x ``size`` RGB picture of ``shape`` as a uint8 array."""
    background = rng.integers(0, 256, 3)
    color = (background + rng.integers(80, 176, 3)) % 256  # far enough from the background
    pixels = np.clip(background + rng.normal(0, 18, (size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    radius = rng.uniform(0.18, 0.38) * size
    cx, cy = rng.uniform(radius, size - radius, 2)
    fill = tuple(int(c) for c in color)
    canvas = ImageDraw.Draw(image)
    if shape == "circle":
        canvas.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    elif shape == "square":
        angle = rng.uniform(0, np.pi / 2)
        corners = [angle + k * np.pi / 2 + np.pi / 4 for k in range(4)]
        canvas.polygon([(cx + radius * np.cos(a), cy + radius * np.sin(a)) for a in corners], fill=fill)
    else:
        angle = rng.uniform(0, 2 * np.pi)
        corners = [angle + k * 2 * np.pi / 3 for k in range(3)]
        canvas.polygon([(cx + radius * np.cos(a), cy + radius * np.sin(a)) for a in corners], fill=fill)
    return np.asarray(image)


def draw_digit(digit, size=64):
    """A white digit on black, drawn with Pillow's built-in font and scaled up."""
    small = Image.new("L", (8, 12))
    ImageDraw.Draw(small).text((1, 0), str(digit), fill=255)
    return np.asarray(small.resize((size * 8 // 12, size), Image.NEAREST).convert("RGB"))


def make_folder(root, per_class=40, size=64, seed=0):
    """``root/<class>/<n>.jpg`` for every class; returns the number of files written."""
    rng = np.random.default_rng(seed)
    for shape in CLASSES:
        os.makedirs(os.path.join(root, shape), exist_ok=True)
        for n in range(per_class):
            Image.fromarray(draw(shape, size, rng)).save(os.path.join(root, shape, f"{n:03d}.jpg"),
                                                         quality=90)
    return per_class * len(CLASSES)


def make_samples(root, size=64, seed=1):
    """``root/images/<class>.jpg``, ``root/images/digit.png`` and ``root/labels.txt``."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    for shape in CLASSES:
        Image.fromarray(draw(shape, size, rng)).save(os.path.join(root, "images", f"{shape}.jpg"),
                                                     quality=90)
    Image.fromarray(draw_digit(3, size)).save(os.path.join(root, "images", "digit.png"))
    with open(os.path.join(root, "labels.txt"), "w", encoding="utf-8") as f:
        f.write("".join(f"{shape}\n" for shape in CLASSES))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("folder", nargs="?", help="where to write <class>/<n>.jpg")
    parser.add_argument("--per-class", type=int, default=40, help="images per class (default: 40)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default: 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", metavar="DIR", help="write the shipped sample files into DIR")
    args = parser.parse_args(argv)
    if not args.folder and not args.samples:
        parser.error("give a folder, or --samples DIR")
    if args.folder:
        count = make_folder(args.folder, args.per_class, args.size, args.seed)
        print(f"wrote {count} images of {len(CLASSES)} classes ({', '.join(CLASSES)}) to {args.folder}/")
    if args.samples:
        make_samples(args.samples, args.size)
        print(f"wrote {args.samples}/images/ and {args.samples}/labels.txt")


if __name__ == "__main__":
    main()
