"""Benchmark a Mixer on JAX, TensorFlow and PyTorch (each backend in its own subprocess).

By default: inference and training img/s and peak memory, as a fraction of
reference GEMMs measured in the same run, in the row's dtype (the backend's best
shape, and the best across backends: the machine's limit); beside keras-cv's
legacy MLPMixer (and timm on torch); the report names the CPU and its matrix units. Writes PREFIX.json and
PREFIX.md (--out) and prints the table. `keras-mixer benchmark training --help`:
the training suite (training img/s, tf.data pipelines, CIFAR-10 accuracy);
`keras-mixer benchmark data --help`: the data suite (starts, check, pipelines, records
at 10k-1M images).
Examples:

  keras-mixer benchmark --quick                            # B/16, batch 2, all backends
  keras-mixer benchmark --batch-sizes 16 --modes inference --out results/b16
  keras-mixer benchmark --variant L/16 --dtypes float32 bfloat16 --batch-sizes 64
  keras-mixer benchmark --baseline ../keras-mixer-0.2 --rounds 5 --no-peers   # before/after
  keras-mixer benchmark training --backends jax tensorflow torch --image-size 32 \\
      --batch-size 64 --cifar-steps 300                    # = scripts/benchmark_training.py
  keras-mixer benchmark data --sizes 10000 100000          # writes benchmarks/DATE-data.md
"""

import argparse
import datetime
import os

from keras_mixer import benchmark
from keras_mixer.benchmark import compare, data, training
from keras_mixer.cli.arguments import non_negative_int, positive_int
from keras_mixer.config import VARIANTS, MixerConfig, canonical_variant

TRAINING_HELP = """Training benchmark: training img/s per backend (ratios against the first listed),
tf.data input-pipeline img/s (keras-cv vs Keras core RandAugment), and CIFAR-10 top-1
after --cifar-steps training steps. Writes PREFIX.json and PREFIX.md (--out). Example:

  keras-mixer benchmark training --backends jax tensorflow torch --image-size 32 \\
      --batch-size 64 --cifar-steps 300
"""


def add_arguments(parser):
    """The throughput options, and the ``training`` suite as a subcommand."""
    parser.add_argument("--variant", default="B/16", help="paper variant (default: B/16)")
    parser.add_argument("--config", metavar="P,N,C,DS,DC",
                        help="custom architecture instead of --variant: patch, blocks, width, "
                             "token-MLP width, channel-MLP width")
    parser.add_argument("--image-size", type=positive_int, default=224)
    parser.add_argument("--batch-sizes", type=positive_int, nargs="+", default=None,
                        help="default: 16 (2 with --quick)")
    parser.add_argument("--dtypes", nargs="+", choices=benchmark.DTYPES, default=["float32"],
                        help="bfloat16: bfloat16 inference, mixed_bfloat16 training")
    parser.add_argument("--modes", nargs="+", choices=benchmark.MODES,
                        default=list(benchmark.MODES))
    _add_backends(parser)
    parser.add_argument("--repeats", type=positive_int, default=None,
                        help="timed steps (default 3; 2 quick)")
    parser.add_argument("--warmup", type=non_negative_int, default=1, help="untimed steps first")
    parser.add_argument("--jit-compile", choices=["auto", "true", "false"], default="auto",
                        help="model.compile(jit_compile=...): XLA on TF/JAX, torch.compile on torch")
    parser.add_argument("--optimizer", choices=benchmark.OPTIMIZERS, default="recipe",
                        help="training rows: the recipe's AdamW (weight decay masks, clipping, "
                             "schedule; default) or plain keras.optimizers.AdamW")
    parser.add_argument("--max-isa", choices=sorted(benchmark.MAX_ISA), default=None,
                        help="cap every backend's kernels (oneDNN, MKL, ATen, XLA CPU) at this "
                             "instruction set: an AMX machine standing in for an AVX2 or an "
                             "AVX-512 CPU without AMX (default: no cap)")
    parser.add_argument("--no-peers", action="store_true",
                        help="skip peers (keras-cv legacy MLPMixer; timm on torch)")
    parser.add_argument("--exports", action="store_true",
                        help="also measure exported models: SavedModel img/s, the SavedModel served over "
                             "gRPC (1 and 8 clients, batch 1 and 16, p50/p99) vs direct, "
                             "TFLite latency")
    parser.add_argument("--quick", action="store_true",
                        help="laptop mode: batch 2, 2 repeats, no peers")
    parser.add_argument("--baseline", metavar="CHECKOUT",
                        help="before/after: run the suite on this keras-mixer checkout (e.g. a git "
                             "worktree of the previous release) and on this one, interleaved, "
                             "and report current / baseline per row (peers and exports left out)")
    parser.add_argument("--rounds", type=positive_int, default=3,
                        help="with --baseline: rounds per backend, each running both (default: 3)")
    _add_out(parser, "benchmark_results")
    suites = parser.add_subparsers(dest="suite", metavar="SUITE",
                                   help="training, data: the training and data benchmarks "
                                        "(see their --help)")
    _add_training_arguments(suites.add_parser(
        "training", help="training img/s, input pipelines, CIFAR-10 accuracy",
        description=TRAINING_HELP, formatter_class=argparse.RawDescriptionHelpFormatter))
    _add_data_arguments(suites.add_parser(
        "data", help="data starts, bad-image check, pipelines and records at 10k-1M images",
        description=data.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))


def _add_data_arguments(parser):
    spec = data.DataSpec
    parser.add_argument("--sizes", type=int, nargs="+", default=list(spec.sizes),
                        help="images per synthetic folder (default: %(default)s)")
    _add_integers(parser, spec, (
        ("--image-side", "image_side", "side of the synthetic JPEGs"),
        ("--classes", "classes", "class folders"),
        ("--image-size", "image_size", "model input side"),
        ("--batch-size", "batch_size", "batch size"),
        ("--pipeline-batches", "pipeline_batches", "timed batches per pipeline"),
        ("--model-steps", "model_steps", "timed training steps per model (0: skip)"),
        ("--repeats", "repeats", "attempts at the first start and the decode pass (the best)")))
    parser.add_argument("--variants", nargs="+", default=list(spec.variants),
                        help="models whose training step rate the pipeline is compared with "
                             "(default: %(default)s)")
    parser.add_argument("--model-backend", choices=benchmark.BACKENDS, default=spec.backend,
                        help="backend of the model steps (default: %(default)s)")
    parser.add_argument("--no-records", action="store_true", help="skip keras-mixer prepare")
    parser.add_argument("--work-dir", default=spec.work_dir,
                        help="where the folders are written (and deleted) (default: %(default)s)")
    parser.add_argument("--min-free-gb", type=float, default=spec.min_free_gb,
                        help="skip a size that would leave less free disk (default: %(default)s)")
    _add_out(parser, os.path.join("benchmarks", f"{datetime.date.today().isoformat()}-data"))


def _add_training_arguments(parser):
    spec = training.TrainingSpec
    _add_backends(parser)
    parser.add_argument("--variant", default=spec.variant,
                        help="paper variant, or custom: the three sizes below (D_S = C/2, D_C = 4C)")
    _add_integers(parser, spec, (
        ("--image-size", "image_size", "input side in pixels"),
        ("--patch-size", "patch_size", "custom: patch side P"),
        ("--hidden-dim", "hidden_dim", "custom: token width C"),
        ("--num-blocks", "num_blocks", "custom: number of blocks"),
        ("--batch-size", "batch_size", "batch size"),
        ("--steps", "steps", "timed training steps"),
        ("--pipeline-batches", "pipeline_batches", "timed batches per input pipeline (0: skip)"),
        ("--cifar-steps", "cifar_steps", "accuracy budget: training steps on CIFAR-10 (0: skip)")))
    parser.add_argument("--cifar-data", default=spec.cifar_data,
                        help="the cifar10-jpg tarball, or an image folder with train/ and test/ "
                             "(default: %(default)s)")
    parser.add_argument("--cifar-dir", default=spec.cifar_dir,
                        help="where the tarball is extracted, once (default: %(default)s)")
    _add_out(parser, "benchmark_results_training")
    # --backend and --verbose come from the dispatcher (keras_mixer.cli.add_common_arguments).


def _add_integers(parser, spec, options):
    """``--flag N`` for each ``(flag, spec field, help)``, its default the spec's."""
    for flag, field, help_text in options:
        parser.add_argument(flag, type=int, default=getattr(spec, field),
                            help=f"{help_text} (default: {getattr(spec, field)})")


def _add_backends(parser):
    parser.add_argument("--backends", nargs="+", choices=benchmark.BACKENDS,
                        default=list(benchmark.BACKENDS), help="default: all three")


def _add_out(parser, default):
    parser.add_argument("--out", default=default,
                        help="output prefix: writes PREFIX.json and PREFIX.md (default: %(default)s)")


def spec_from_args(args):
    """The :class:`~keras_mixer.benchmark.BenchmarkSpec` or ``TrainingSpec`` of parsed arguments."""
    if args.suite == "data":
        return data.DataSpec(
            sizes=args.sizes, image_side=args.image_side, classes=args.classes,
            image_size=args.image_size, batch_size=args.batch_size,
            pipeline_batches=args.pipeline_batches, variants=args.variants,
            model_steps=args.model_steps, repeats=args.repeats, backend=args.model_backend,
            records=not args.no_records, work_dir=args.work_dir, min_free_gb=args.min_free_gb)
    if args.suite == "training":
        return training.TrainingSpec(
            variant=args.variant, image_size=args.image_size, patch_size=args.patch_size,
            hidden_dim=args.hidden_dim, num_blocks=args.num_blocks, batch_size=args.batch_size,
            steps=args.steps, pipeline_batches=args.pipeline_batches,
            cifar_steps=args.cifar_steps, cifar_data=args.cifar_data, cifar_dir=args.cifar_dir)
    if args.config:
        try:
            config = MixerConfig(*[int(v) for v in args.config.split(",")])
        except (TypeError, ValueError):
            raise ValueError(f"--config needs five integers P,N,C,DS,DC, got {args.config!r}.") from None
        name = f"custom {args.config}"
    else:
        name = canonical_variant(args.variant)
        config = VARIANTS[name]
    return benchmark.BenchmarkSpec(
        config=config, name=name, image_size=args.image_size,
        batch_sizes=args.batch_sizes or ((2,) if args.quick else (16,)),
        dtypes=tuple(args.dtypes), modes=tuple(args.modes),
        repeats=args.repeats or (2 if args.quick else 3), warmup=args.warmup,
        jit_compile={"auto": "auto", "true": True, "false": False}[args.jit_compile],
        peers=not (args.no_peers or args.quick), exports=args.exports, optimizer=args.optimizer,
        max_isa=args.max_isa,
    )


def run(args):
    """Run the suite; exit status 1 when anything asked for was not measured."""
    if getattr(args, "baseline", None) and args.suite:
        raise ValueError(f"--baseline compares the model suite (keras-mixer benchmark without a "
                         f"suite), not the {args.suite} suite.")
    spec = spec_from_args(args)
    if args.suite == "data":
        report = data.run(spec, json_path=args.out + ".json", markdown_path=args.out + ".md")
        return 1 if report["notes"] or any("error" in row for row in report["sizes"]) else 0
    if args.suite == "training" and spec.cifar_steps and not training.has_cifar(spec):
        raise ValueError(
            f"no CIFAR-10 data at {spec.cifar_data} for --cifar-steps {spec.cifar_steps}: give the "
            f"cifar10-jpg tarball or an image folder with train/ and test/ as --cifar-data, or "
            f"pass --cifar-steps 0 to measure speed only.")
    if getattr(args, "baseline", None):
        report = compare.compare(spec, args.baseline, args.backends, rounds=args.rounds)
        compare.write(report, args.out)
        print()
        print(compare.markdown(report))
        return 0
    report = benchmark.run(spec, backends=args.backends,
                           json_path=args.out + ".json", markdown_path=args.out + ".md")
    print()
    print(benchmark.markdown(report))
    return 0 if benchmark.succeeded(report) else 1
