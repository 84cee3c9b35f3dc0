"""Benchmark a Mixer on JAX, TensorFlow and PyTorch (each backend in its own subprocess).

Inference and training img/s and peak memory, as a fraction of a matmul of the
channel-mixing shape measured in the same run, in the row's dtype; beside
keras-cv's legacy MLPMixer (and timm on torch). Writes PREFIX.json and PREFIX.md (--out) and
prints the table. Examples:

  keras-mixer benchmark --quick                            # B/16, batch 2, all backends
  keras-mixer benchmark --batch-sizes 16 --modes inference --out results/b16
  keras-mixer benchmark --variant L/16 --dtypes float32 bfloat16 --batch-sizes 64
"""

from keras_mixer import benchmark
from keras_mixer.config import VARIANTS, MixerConfig, canonical_variant


def add_arguments(parser):
    """The benchmark's options."""
    parser.add_argument("--variant", default="B/16", help="paper variant (default: B/16)")
    parser.add_argument("--config", metavar="P,N,C,DS,DC",
                        help="custom architecture instead of --variant: patch, blocks, width, "
                             "token-MLP width, channel-MLP width")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                        help="default: 16 (2 with --quick)")
    parser.add_argument("--dtypes", nargs="+", choices=benchmark.DTYPES, default=["float32"],
                        help="bfloat16: bfloat16 inference, mixed_bfloat16 training")
    parser.add_argument("--modes", nargs="+", choices=benchmark.MODES,
                        default=list(benchmark.MODES))
    _add_backends(parser)
    parser.add_argument("--repeats", type=int, default=None, help="timed steps (default 3; 2 quick)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--jit-compile", choices=["auto", "true", "false"], default="auto",
                        help="model.compile(jit_compile=...): XLA on TF/JAX, torch.compile on torch")
    parser.add_argument("--no-peers", action="store_true",
                        help="skip peers (keras-cv legacy MLPMixer; timm on torch)")
    parser.add_argument("--exports", action="store_true",
                        help="also measure exported models (SavedModel img/s, TFLite latency)")
    parser.add_argument("--quick", action="store_true",
                        help="laptop mode: batch 2, 2 repeats, no peers")
    _add_out(parser, "benchmark_results")


def _add_backends(parser):
    parser.add_argument("--backends", nargs="+", choices=benchmark.BACKENDS,
                        default=list(benchmark.BACKENDS), help="default: all three")


def _add_out(parser, default):
    parser.add_argument("--out", default=default,
                        help="output prefix: writes PREFIX.json and PREFIX.md (default: %(default)s)")


def spec_from_args(args):
    """The :class:`~keras_mixer.benchmark.BenchmarkSpec` of parsed arguments."""
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
        peers=not (args.no_peers or args.quick), exports=args.exports,
    )


def run(args):
    """Run the benchmark; exit status 1 when anything asked for was not measured."""
    report = benchmark.run(spec_from_args(args), backends=args.backends,
                           json_path=args.out + ".json", markdown_path=args.out + ".md")
    print()
    print(benchmark.markdown(report))
    return 0 if benchmark.succeeded(report) else 1
