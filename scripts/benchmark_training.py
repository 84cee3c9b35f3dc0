#!/usr/bin/env python
"""Training benchmark (a report, not a test): training img/s per backend, input-pipeline img/s,
and CIFAR-10 accuracy after a fixed budget (from ../shared/data when present).

Each backend runs in its own process; ratios are against the first backend listed,
measured in the same run. Example:

  python scripts/benchmark_training.py --backends jax tensorflow torch --variant custom \\
      --image-size 32 --batch-size 64 --steps 10 --cifar-steps 300
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CIFAR_TAR = os.path.join(ROOT, "..", "shared", "data", "cifar10-jpg", "cifar10-jpg.tar.gz")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=["jax", "tensorflow", "torch"])
    parser.add_argument("--variant", default="custom", help="paper variant or custom (train.py sizes)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=4)
    parser.add_argument("--hidden-dim", type=int, default=64)
    parser.add_argument("--num-blocks", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--pipeline-batches", type=int, default=20)
    parser.add_argument("--cifar-steps", type=int, default=0,
                        help="accuracy budget: training steps on CIFAR-10 (0: skip)")
    parser.add_argument("--cifar-dir", default=os.path.join(tempfile.gettempdir(), "cifar10-jpg"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def config_for(args, **overrides):
    from keras_mixer.training import TrainConfig

    width = dict(hidden_dim=args.hidden_dim, tokens_mlp_dim=args.hidden_dim // 2,
                 channels_mlp_dim=4 * args.hidden_dim)
    return TrainConfig(variant=args.variant, image_size=args.image_size, patch_size=args.patch_size,
                       num_blocks=args.num_blocks, batch_size=args.batch_size, export=False,
                       **width, **overrides)


def worker(args):
    """Runs under one backend: training img/s (and CIFAR accuracy when asked)."""
    import keras
    from keras_mixer import training

    config = config_for(args)
    model = training.build_model(config, 10)
    training.compile_model(model, config, total_steps=1000, warmup_steps=10)
    result = {"backend": keras.backend.backend(), "params": model.count_params(),
              "train_img_per_s": training.training_throughput(model, args.batch_size, args.steps)}
    if args.cifar_steps and os.path.exists(CIFAR_TAR):
        from keras_mixer.data import extract_image_tar

        root = extract_image_tar(CIFAR_TAR, args.cifar_dir)
        cifar = config_for(args, data=root, epochs=1, steps_per_epoch=args.cifar_steps, flip=True,
                           crop_min_area=0.3, warmup_epochs=0.1, progress="0",
                           run_dir=tempfile.mkdtemp(prefix="bench-cifar-"))
        run = training.train(cifar)
        result.update(cifar_steps=args.cifar_steps, cifar_top1=run["top1"],
                      cifar_seconds=run["seconds"])
    print("RESULT " + json.dumps(result))


def pipelines(args):
    """Input-pipeline img/s: digits with and without augmentation; keras-cv vs Keras RandAugment."""
    import keras
    from keras_mixer import data

    source = data.load_source("digits", "train")
    size, batch = args.image_size, args.batch_size
    rows = {}
    for name, augment in (("eval resize", None),
                          ("train crop+flip", data.Augmentation()),
                          ("train crop+flip+mixup", data.Augmentation(mixup_alpha=0.2)),
                          ("train + RandAugment(2, 10) keras-cv",
                           data.Augmentation(randaug_magnitude=10))):
        dataset = data.make_dataset(source, batch, size, augment is not None,
                                    augment or data.Augmentation(), repeat=True)
        rows[name] = data.pipeline_throughput(dataset, args.pipeline_batches)
    core = keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=1.0, seed=0)
    dataset = data.make_dataset(source, batch, size, True, repeat=True)
    dataset = dataset.map(lambda x, y: (core(x), y))
    rows["train + RandAugment(2, 10) Keras core"] = data.pipeline_throughput(dataset,
                                                                             args.pipeline_batches)
    return rows


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, ROOT)
    if args.worker:
        return worker(args)
    results = []
    for backend in args.backends:
        env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=ROOT)
        out = subprocess.run([sys.executable, __file__, *(argv or sys.argv[1:]), "--worker", "1"],
                             env=env, capture_output=True, text=True)
        lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
        if not lines:
            print(f"{backend}: failed\n{out.stderr[-2000:]}")
            continue
        results.append(json.loads(lines[-1][7:]))
    print(f"\nTraining throughput ({args.variant}, {args.image_size}px, batch {args.batch_size}, "
          f"{args.steps} timed steps):")
    for r in results:
        ratio = r["train_img_per_s"] / results[0]["train_img_per_s"]
        line = f"  {r['backend']:<11} {r['train_img_per_s']:8.1f} img/s  x{ratio:.2f} vs {results[0]['backend']}"
        if "cifar_top1" in r:
            line += f"  CIFAR-10 top-1 {r['cifar_top1']:.4f} after {r['cifar_steps']} steps ({r['cifar_seconds']} s)"
        print(line)
    os.environ["KERAS_BACKEND"] = "tensorflow"
    rows = pipelines(args)
    reference = rows["eval resize"]
    print(f"\nInput pipeline (digits -> {args.image_size}px, batch {args.batch_size}, tf.data):")
    for name, rate in rows.items():
        print(f"  {name:<40} {rate:9.1f} img/s  x{rate / reference:.2f} vs eval resize")


if __name__ == "__main__":
    main()
