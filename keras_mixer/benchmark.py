"""Throughput benchmarks of a Mixer on each Keras backend, against the same run's matmul rate.

Every backend runs in its own subprocess (Keras fixes the backend at import). Inside
it, each model measurement is interleaved with a float32 matmul of the Mixer's
channel-mixing shape ``(batch * S, C) @ (C, D_C)`` on the same backend and device,
so a result reads as a fraction of the matmul rate the machine achieved *in that
run*: on a shared or throttled machine both numbers move together.

Model FLOPs come from the architecture (:func:`flops`); a step's time is the best
of the repeats (contention on a shared machine only ever adds time), and the
median is kept in the JSON too.

Run ``python scripts/benchmark.py --help``; the worker entry point is
``python -m keras_mixer.benchmark SPEC.json OUT.json`` under a chosen ``KERAS_BACKEND``.
"""

import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from keras_mixer.files import atomic_output
from keras_mixer import deploy, models
from keras_mixer.config import VARIANTS, MixerConfig, as_architecture, canonical_variant, flops

BACKENDS = ("jax", "tensorflow", "torch")
DTYPES = ("float32", "bfloat16")
MODES = ("inference", "training")
# Training does the forward matmuls plus two of the same size per matmul in the backward pass.
TRAINING_FLOPS_FACTOR = 3
MATMUL_SECONDS = 0.25  # target duration of one timed block of reference matmuls


@dataclasses.dataclass
class BenchmarkSpec:
    """What one benchmark run measures (the same on every backend)."""

    config: MixerConfig
    name: str = "B/16"
    image_size: int = 224
    batch_sizes: tuple = (16,)
    dtypes: tuple = ("float32",)
    modes: tuple = MODES
    repeats: int = 3
    warmup: int = 1
    jit_compile: object = "auto"
    peers: bool = True
    exports: bool = False
    num_classes: int = 1000

    def __post_init__(self):
        self.config = as_architecture(self.config)
        self.batch_sizes = tuple(int(b) for b in self.batch_sizes)
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch sizes must be positive integers, got {self.batch_sizes}.")
        for value, allowed, what in ((self.dtypes, DTYPES, "dtype"), (self.modes, MODES, "mode")):
            unknown = set(value) - set(allowed)
            if unknown or not value:
                raise ValueError(f"Unknown {what} {sorted(unknown)}; choose from {allowed}.")
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {self.repeats}, {self.warmup}.")
        if self.jit_compile not in ("auto", True, False):
            raise ValueError(f"jit_compile must be 'auto', True or False, got {self.jit_compile!r}.")
        flops(self.config, self.image_size)  # validates the image size

    def to_json(self):
        return dict(dataclasses.asdict(self), config=dataclasses.asdict(self.config))

    @classmethod
    def from_json(cls, data):
        return cls(**data)


# --------------------------------------------------------------------------- driver


def run(spec, backends=BACKENDS, json_path=None, markdown_path=None, log=print):
    """Benchmark ``spec`` on each backend, each in its own subprocess.

    Returns the report dict; writes it as JSON and as a Markdown table when paths are given.
    """
    unknown = set(backends) - set(BACKENDS)
    if unknown or not backends:
        raise ValueError(f"Unknown backend(s) {sorted(unknown)}; choose from {BACKENDS}.")
    report = dict(spec=spec.to_json(), host=host_info(), backends={}, results=[])
    for backend in backends:
        log(f"=== {backend}: starting a subprocess with KERAS_BACKEND={backend}")
        outcome = _run_worker(backend, spec)
        report["backends"][backend] = {k: v for k, v in outcome.items() if k != "results"}
        report["results"].extend(outcome.get("results", []))
        if "error" in outcome:
            log(f"=== {backend}: FAILED: {outcome['error']}")
    if json_path:
        _write_atomic(json_path, json.dumps(report, indent=2) + "\n")
        log(f"wrote {json_path}")
    if markdown_path:
        _write_atomic(markdown_path, markdown(report))
        log(f"wrote {markdown_path}")
    return report


def _run_worker(backend, spec):
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND=backend)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "out.json")
        with open(spec_path, "w") as f:
            json.dump(spec.to_json(), f)
        proc = subprocess.run(
            [sys.executable, "-m", "keras_mixer.benchmark", spec_path, out_path], env=env
        )
        if proc.returncode != 0 or not os.path.exists(out_path):
            return dict(error=f"worker exited with status {proc.returncode}", results=[])
        with open(out_path) as f:
            return json.load(f)


def _write_atomic(path, text):
    with atomic_output(path) as temp, open(temp, "w") as f:
        f.write(text)


def markdown(report):
    """The results of a report as a Markdown table (one row per measurement)."""
    spec = report["spec"]
    lines = [
        f"Mixer {spec['name']} at {spec['image_size']}x{spec['image_size']}, "
        f"{flops(spec['config'], spec['image_size'], spec['num_classes']) / 1e9:.2f} GFLOP/image "
        f"forward; host: {report['host']['cpu']} ({report['host']['cpu_count']} cores).",
        "",
        "| backend | device | mode | dtype | batch | img/s | model GFLOP/s | matmul GFLOP/s "
        "| of matmul | peak MiB | peer | peer img/s | ours/peer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['backend']} | {r.get('device', '')} | {r['mode']} | {r['dtype']} "
                         f"| {r['batch']} | error: {r['error']} |||||||| ")
            continue
        peer = r.get("peer") or {}
        lines.append(
            f"| {r['backend']} | {r['device']} | {r['mode']} | {r['dtype']} | {r['batch']} "
            f"| {r['img_per_s']:.3g} | {r['model_gflops']:.3g} | {r['matmul_gflops']:.3g} "
            f"| {r['fraction_of_matmul']:.2f} | {r['peak_mib']:.0f} | {peer.get('name', '')} "
            f"| {_fmt(peer.get('img_per_s'))} | {_fmt(peer.get('ratio'))} |"
        )
    lines += _exports_markdown(report)
    notes = [f"- {b}: {info['error']}" for b, info in report["backends"].items() if "error" in info]
    notes += [f"- {b}: {note}" for b, info in report["backends"].items()
              for note in info.get("notes", [])]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def _exports_markdown(report):
    rows = [(backend, row) for backend, info in report["backends"].items()
            if isinstance(info.get("exports"), list) for row in info["exports"]]
    if not rows:
        return []
    lines = ["", "| exported from | artifact | img/s | latency ms (1 thread) | size MB | max abs err |",
             "|---|---|---|---|---|---|"]
    for backend, row in rows:
        size, error = row.get("size_bytes"), row.get("max_abs_error")
        lines.append(
            f"| {backend} | {row['artifact']} | {_fmt(row.get('images_per_second'))} "
            f"| {_fmt(row.get('latency_ms'))} | {_fmt(size and size / 1e6)} "
            f"| {'' if error is None else f'{error:.1e}'} |"
        )
    return lines


def _fmt(value):
    return "" if value is None else f"{value:.2f}"


def host_info():
    return dict(cpu=_cpu_name(), cpu_count=os.cpu_count(), python=platform.python_version(),
                platform=platform.platform())


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --------------------------------------------------------------------------- worker


def run_backend(spec, log=print):
    """Run every measurement of ``spec`` on the current Keras backend (in this process)."""
    import keras

    backend = keras.backend.backend()
    device = device_name()
    outcome = dict(backend=backend, device=device, versions=_versions(backend), notes=[],
                   results=[])
    say = lambda msg: log(f"[{backend}] {msg}")  # noqa: E731
    say(f"device: {device}; model: Mixer {spec.name} at {spec.image_size}, "
        f"{flops(spec.config, spec.image_size, spec.num_classes) / 1e9:.2f} GFLOP/image")
    peer_factory, peer_note = _peer_factory(backend, spec)
    if spec.peers and peer_note:
        outcome["notes"].append(peer_note)
    for dtype in spec.dtypes:
        for mode in spec.modes:
            for batch in spec.batch_sizes:
                case = dict(backend=backend, device=device, mode=mode, dtype=dtype, batch=batch)
                label = f"{mode} {dtype} batch {batch}"
                try:
                    case.update(_measure(spec, mode, dtype, batch, peer_factory, say, label))
                except Exception as error:  # noqa: BLE001 - report and go on (e.g. no bf16 kernel)
                    case["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
                    say(f"{label}: FAILED: {case['error']}")
                outcome["results"].append(case)
                keras.utils.clear_session()
    if spec.exports:
        outcome["exports"] = export_results(spec, say)
    return outcome


def _measure(spec, mode, dtype, batch, peer_factory, say, label):
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, spec.image_size, spec.image_size, 3)).astype("float32")
    labels = rng.integers(0, spec.num_classes, (batch,))
    say(f"{label}: building and compiling")
    step = _model_step(_build_mixer(spec, mode, dtype), spec, mode, images, labels)
    peer_step = None
    if spec.peers and peer_factory is not None and not (mode == "training" and peer_factory.inference_only):
        peer_step = _model_step(peer_factory(mode, dtype), spec, mode, images, labels,
                                torch_eager=peer_factory.inference_only)
    matmul = _matmul_step(spec, batch)

    for _ in range(spec.warmup):
        step()
        if peer_step:
            peer_step()
    calls = max(1, min(50, round(MATMUL_SECONDS / max(_time(matmul), 1e-6))))
    times = dict(model=[], matmul=[], peer=[])
    with PeakMemory() as memory:
        for i in range(spec.repeats):
            times["matmul"].append(_time(matmul, calls) / calls)
            times["model"].append(_time(step))
            if peer_step:
                times["peer"].append(_time(peer_step))
            say(f"{label}: repeat {i + 1}/{spec.repeats}: {batch / times['model'][-1]:.2f} img/s")

    work = flops(spec.config, spec.image_size, spec.num_classes) * batch
    work *= TRAINING_FLOPS_FACTOR if mode == "training" else 1
    mm = _matmul_flops(spec, batch)
    result = dict(
        img_per_s=batch / min(times["model"]),
        img_per_s_median=batch / statistics.median(times["model"]),
        model_gflops=work / min(times["model"]) / 1e9,
        matmul_gflops=mm / min(times["matmul"]) / 1e9,
        matmul_gflops_median=mm / statistics.median(times["matmul"]) / 1e9,
        peak_mib=memory.peak_mib,
        seconds=times,
    )
    result["fraction_of_matmul"] = result["model_gflops"] / result["matmul_gflops"]
    if peer_step:
        peer_rate = batch / min(times["peer"])
        result["peer"] = dict(name=peer_factory.name, img_per_s=peer_rate,
                              ratio=result["img_per_s"] / peer_rate)
    say(f"{label}: {result['img_per_s']:.2f} img/s, {result['model_gflops']:.1f} GFLOP/s = "
        f"{result['fraction_of_matmul']:.2f} of the same-run matmul "
        f"({result['matmul_gflops']:.1f} GFLOP/s)"
        + (f"; {result['peer']['ratio']:.2f}x {peer_factory.name}" if peer_step else ""))
    return result


def _time(fn, calls=1):
    start = time.perf_counter()
    for _ in range(calls):
        out = fn()
    _block(out)
    return time.perf_counter() - start


def _block(value):
    """Wait for an asynchronously dispatched result (JAX, GPUs)."""
    import keras

    if value is not None and hasattr(value, "shape") and not hasattr(value, "__array_interface__"):
        keras.ops.convert_to_numpy(keras.ops.reshape(value, (-1,))[0])


def _policy(mode, dtype):
    if dtype == "float32":
        return "float32"
    return "mixed_bfloat16" if mode == "training" else "bfloat16"


def _build_mixer(spec, mode, dtype):
    with _dtype_policy(_policy(mode, dtype)):
        return models.MlpMixer(**dataclasses.asdict(spec.config), num_classes=spec.num_classes,
                        input_shape=(spec.image_size, spec.image_size, 3),
                        classifier_activation=None, name="mixer")


class _dtype_policy:
    def __init__(self, policy):
        self.policy = policy

    def __enter__(self):
        import keras

        self.previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(self.policy)

    def __exit__(self, *exc):
        import keras

        keras.config.set_dtype_policy(self.previous)


def _model_step(model, spec, mode, images, labels, torch_eager=False):
    """A zero-argument callable running one inference or training step."""
    if torch_eager:  # a plain torch module (timm)
        import torch

        tensor = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())

        def eager():
            with torch.no_grad():
                return model(tensor)

        return eager
    import keras

    model.compile(
        optimizer=keras.optimizers.AdamW(1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=spec.jit_compile,
    )
    if mode == "inference":
        return lambda: model.predict_on_batch(images)
    return lambda: model.train_on_batch(images, labels)


def _matmul_flops(spec, batch):
    tokens = (spec.image_size // spec.config.patch_size) ** 2
    return 2 * batch * tokens * spec.config.hidden_dim * spec.config.channels_mlp_dim


def _matmul_step(spec, batch):
    """The physical reference: float32 ``(batch * S, C) @ (C, D_C)`` on this backend."""
    import keras
    import numpy as np

    tokens = (spec.image_size // spec.config.patch_size) ** 2
    rng = np.random.default_rng(1)
    a = keras.ops.convert_to_tensor(
        rng.standard_normal((batch * tokens, spec.config.hidden_dim), dtype="float32"))
    b = keras.ops.convert_to_tensor(
        rng.standard_normal((spec.config.hidden_dim, spec.config.channels_mlp_dim), dtype="float32"))
    return lambda: keras.ops.matmul(a, b)


class _Peer:
    def __init__(self, name, build, inference_only=False):
        self.name, self.build, self.inference_only = name, build, inference_only

    def __call__(self, mode, dtype):
        return self.build(mode, dtype)


def _peer_factory(backend, spec):
    """The same architecture from another library, or ``(None, why not)``."""
    config = spec.config
    if backend == "torch":
        try:
            from timm.models.mlp_mixer import MlpMixer as TimmMixer
        except Exception as error:  # noqa: BLE001
            return None, f"timm not importable ({type(error).__name__}): no torch peer"

        def build_timm(mode, dtype):
            import torch

            model = TimmMixer(
                num_classes=spec.num_classes, img_size=spec.image_size,
                patch_size=config.patch_size, num_blocks=config.num_blocks,
                embed_dim=config.hidden_dim,
                mlp_ratio=(config.tokens_mlp_dim / config.hidden_dim,
                           config.channels_mlp_dim / config.hidden_dim),
            ).eval()
            return model.to(torch.bfloat16) if dtype == "bfloat16" else model

        return _Peer("timm (eager)", build_timm, inference_only=True), None
    try:
        from keras_cv.src.models.legacy.mlp_mixer import MLPMixer as KerasCVMixer
    except Exception as error:  # noqa: BLE001
        return None, f"keras-cv legacy MLPMixer not importable ({type(error).__name__})"

    def build_keras_cv(mode, dtype):
        with _dtype_policy(_policy(mode, dtype)):
            return KerasCVMixer(
                input_shape=(spec.image_size, spec.image_size, 3),
                **dataclasses.asdict(config), include_rescaling=True, include_top=True,
                num_classes=spec.num_classes, classifier_activation=None,
            )

    return _Peer("keras-cv legacy MLPMixer", build_keras_cv), None


def export_results(spec, say):
    """Exported-model measurements (SavedModel img/s, TFLite latency per mode)."""
    return export_benchmark(config=spec.config, image_size=spec.image_size,
                            batch_size=spec.batch_sizes[0], log=say)


def export_benchmark(config, image_size, batch_size, log=print,
                     modes=("float32", "float16", "dynamic_int8")):
    """Measure exported artifacts of a random-weight Mixer: SavedModel ``serving_default``
    img/s at ``batch_size`` and single-thread TFLite latency per mode (int8 needs
    calibration data: left out).

    Returns a list of JSON-serializable dicts, one per artifact.
    """
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch_size, image_size, image_size, 3)).astype("float32")
    with tempfile.TemporaryDirectory() as work:
        model_path = os.path.join(work, "model.keras")
        models.MlpMixer(**dataclasses.asdict(config), input_shape=(image_size, image_size, 3)).save(model_path)
        log("exports: SavedModel")
        serve = tf.saved_model.load(deploy.export_saved_model(model_path, export_dir=work, name="bench"))
        serve = serve.signatures[deploy.SERVING_DEFAULT]
        serve(images=tf.constant(images))  # trace and warm up
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            serve(images=tf.constant(images))
            seconds.append(time.perf_counter() - start)
        rows = [dict(artifact="saved_model", batch=batch_size,
                     images_per_second=batch_size / min(seconds))]
        log(f"exports: SavedModel {rows[0]['images_per_second']:.3g} img/s at batch {batch_size}")
        for row in deploy.export_tflite(model_path, export_dir=work, name="bench", modes=modes,
                                        eval_images=images):
            rows.append(dict(artifact=f"tflite_{row['mode']}", latency_ms=row["latency_ms"],
                             size_bytes=row["size_bytes"], max_abs_error=row["max_abs_error"]))
    return rows


def device_name():
    """The accelerator Keras computes on, or the CPU."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            device = jax.devices()[0]
            if device.platform != "cpu":
                return f"{device.platform}:{getattr(device, 'device_kind', '')}"
        if backend == "torch":
            import torch

            if torch.cuda.is_available():
                return f"cuda:{torch.cuda.get_device_name(0)}"
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                details = tf.config.experimental.get_device_details(gpus[0])
                return f"gpu:{details.get('device_name', gpus[0].name)}"
    except Exception:  # noqa: BLE001 - reporting only
        pass
    return "cpu"


def _versions(backend):
    import keras

    versions = dict(keras=keras.__version__)
    module = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch"}[backend]
    versions[module] = __import__(module).__version__
    return versions


class PeakMemory:
    """Peak memory while the block runs: accelerator peak on GPUs, else resident set size (MiB)."""

    def __enter__(self):
        self.peak_mib = 0.0
        self._gpu = _gpu_peak_reader()
        if self._gpu is None:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while True:
            self.peak_mib = max(self.peak_mib, _rss_mib())
            if self._stop.wait(0.005):
                return

    def __exit__(self, *exc):
        if self._gpu is not None:
            self.peak_mib = self._gpu()
        else:
            self._stop.set()
            self._thread.join()


def _rss_mib():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: the process' lifetime peak
        import resource

        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _gpu_peak_reader():
    """A callable returning the accelerator's peak MiB since now, or None on CPU."""
    import keras

    backend = keras.backend.backend()
    if device_name() == "cpu":
        return None
    if backend == "torch":
        import torch

        torch.cuda.reset_peak_memory_stats()
        return lambda: torch.cuda.max_memory_allocated() / 2**20
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.reset_memory_stats("GPU:0")
        return lambda: tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    import jax

    device = jax.devices()[0]  # JAX keeps a lifetime peak only
    return lambda: (device.memory_stats() or {}).get("peak_bytes_in_use", 0) / 2**20


def _worker_main(spec_path, out_path):
    with open(spec_path) as f:
        spec = BenchmarkSpec.from_json(json.load(f))
    outcome = run_backend(spec, log=lambda msg: print(msg, flush=True))
    _write_atomic(out_path, json.dumps(outcome, indent=2))


# --------------------------------------------------------------------------- CLI


def parse_args(argv=None):
    import argparse

    parser = argparse.ArgumentParser(
        description="Benchmark Mixer inference and training img/s and peak memory on each Keras "
                    "backend, as a fraction of a float32 matmul measured in the same run.")
    parser.add_argument("--variant", default="B/16", help="paper variant (default: B/16)")
    parser.add_argument("--config", metavar="P,N,C,DS,DC",
                        help="custom architecture instead of --variant: patch, blocks, width, "
                             "token-MLP width, channel-MLP width")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                        help="default: 16 (2 with --quick)")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=["float32"])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--repeats", type=int, default=None, help="timed steps (default 3; 2 quick)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--jit-compile", choices=["auto", "true", "false"], default="auto",
                        help="model.compile(jit_compile=...): XLA on TF/JAX, torch.compile on torch")
    parser.add_argument("--no-peers", action="store_true",
                        help="skip peers (keras-cv legacy MLPMixer, timm on torch)")
    parser.add_argument("--exports", action="store_true",
                        help="also measure exported models through keras_mixer.export (tensorflow)")
    parser.add_argument("--quick", action="store_true",
                        help="laptop mode: batch 2, 2 repeats, no peers")
    parser.add_argument("--out", default="benchmark_results",
                        help="output prefix: writes PREFIX.json and PREFIX.md")
    return parser.parse_args(argv)


def spec_from_args(args):
    if args.config:
        try:
            config = MixerConfig(*[int(v) for v in args.config.split(",")])
        except (TypeError, ValueError):
            raise ValueError(f"--config needs five integers P,N,C,DS,DC, got {args.config!r}.")
        name = f"custom {args.config}"
    else:
        name = canonical_variant(args.variant)
        config = VARIANTS[name]
    return BenchmarkSpec(
        config=config, name=name, image_size=args.image_size,
        batch_sizes=args.batch_sizes or ((2,) if args.quick else (16,)),
        dtypes=tuple(args.dtypes), modes=tuple(args.modes),
        repeats=args.repeats or (2 if args.quick else 3), warmup=args.warmup,
        jit_compile={"auto": "auto", "true": True, "false": False}[args.jit_compile],
        peers=not (args.no_peers or args.quick), exports=args.exports,
    )


def main(argv=None):
    args = parse_args(argv)
    spec = spec_from_args(args)
    report = run(spec, backends=tuple(args.backends), json_path=args.out + ".json",
                 markdown_path=args.out + ".md")
    print()
    print(markdown(report))
    return 0 if all("error" not in r for r in report["results"]) and not any(
        "error" in b for b in report["backends"].values()) else 1


if __name__ == "__main__":
    _worker_main(*sys.argv[1:])
