"""Throughput of a Mixer inside one Keras backend, against the same run's matmul rate.

Each model measurement is interleaved with reference GEMMs in the row's dtype, on
the same backend and device: the Mixer's own channel-mixing and token-mixing
shapes and a large square one (:func:`reference_gemms`). The row's reference is
the best of them, so a result reads as a fraction of the matmul rate this backend
achieved *in that run*: on a shared or throttled machine both numbers move
together. :func:`keras_mixer.benchmark.run` adds the best across backends per
dtype (:func:`apply_limits`): what the machine can do, not what one framework does.

Model FLOPs come from the architecture (:func:`keras_mixer.config.flops`); a
step's time is the best of the repeats (contention on a shared machine only ever
adds time), and the median is kept in the JSON too. :func:`run_backend` runs in
the current process; :func:`keras_mixer.benchmark.run` runs it on each backend.
"""

import dataclasses
import functools
import statistics
import time

import keras
import numpy as np

from keras_mixer import models, training
from keras_mixer.benchmark import exports, precision
from keras_mixer.benchmark.gemm import gemm_flops, matmul_step, reference_gemms
from keras_mixer.benchmark.device import PeakMemory, device_name, versions
from keras_mixer.benchmark.peers import find_peer
from keras_mixer.benchmark.report import max_isa_environment
from keras_mixer.config import MixerConfig, as_architecture, flops

DTYPES = ("float32", "bfloat16")
MODES = ("inference", "training")
# Training rows' optimizer: the recipe's (keras_mixer.training: AdamW with weight decay masks,
# global-norm clipping and its schedule, fused on torch), or plain keras.optimizers.AdamW.
OPTIMIZERS = ("recipe", "keras")
# Training does the forward matmuls plus two of the same size per matmul in the backward pass.
TRAINING_FLOPS_FACTOR = 3
MATMUL_SECONDS = 0.25  # target duration of one timed block of reference matmuls (per shape)


@dataclasses.dataclass
class BenchmarkSpec:
    """What one throughput benchmark measures (the same on every backend)."""

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
    optimizer: str = "recipe"
    max_isa: object = None  # a keras_mixer.benchmark.report.MAX_ISA key: kernels capped at that ISA

    suite = "throughput"

    def __post_init__(self):
        self.config = as_architecture(self.config)
        self.batch_sizes = tuple(int(b) for b in self.batch_sizes)
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch sizes must be positive integers, got {self.batch_sizes}.")
        self.dtypes, self.modes = tuple(self.dtypes), tuple(self.modes)
        for value, allowed, what in ((self.dtypes, DTYPES, "dtype"), (self.modes, MODES, "mode")):
            unknown = set(value) - set(allowed)
            if unknown or not value:
                raise ValueError(f"Unknown {what} {sorted(unknown)}; choose from {allowed}.")
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {self.repeats}, {self.warmup}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"Unknown optimizer {self.optimizer!r}; choose from {OPTIMIZERS}.")
        if self.jit_compile not in ("auto", True, False):
            raise ValueError(f"jit_compile must be 'auto', True or False, got {self.jit_compile!r}.")
        max_isa_environment(self.max_isa)  # validates the instruction set
        flops(self.config, self.image_size)  # validates the image size

    def to_json(self):
        return dict(dataclasses.asdict(self), config=dataclasses.asdict(self.config))

    @classmethod
    def from_json(cls, data):
        return cls(**data)


def worker(spec_json):
    """The subprocess side of :func:`keras_mixer.benchmark.run`: JSON in, JSON out."""
    return run_backend(BenchmarkSpec.from_json(spec_json), log=functools.partial(print, flush=True))


def run_backend(spec, log=print):
    """Run every measurement of ``spec`` on the current Keras backend (in this process)."""
    backend = keras.backend.backend()
    device = device_name()
    outcome = dict(backend=backend, device=device, versions=versions(), notes=[], results=[])

    def say(message):
        log(f"[{backend}] {message}")

    say(f"device: {device}; model: Mixer {spec.name} at {spec.image_size}, "
        f"{flops(spec.config, spec.image_size, spec.num_classes) / 1e9:.2f} GFLOP/image")
    peer, why_not = (find_peer(backend, spec.config, spec.image_size, spec.num_classes)
                     if spec.peers else (None, None))
    if why_not:
        outcome["notes"].append(why_not)
    for dtype in spec.dtypes:
        for mode in spec.modes:
            for batch in spec.batch_sizes:
                case = dict(backend=backend, device=device, mode=mode, dtype=dtype, batch=batch)
                label = f"{mode} {dtype} batch {batch}"
                try:
                    case.update(_measure(spec, mode, dtype, batch, peer, say, label))
                except Exception as error:  # noqa: BLE001 - report and go on (e.g. no bf16 kernel)
                    case["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
                    say(f"{label}: FAILED: {case['error']}")
                outcome["results"].append(case)
                keras.utils.clear_session()
    if "bfloat16" in spec.dtypes:  # what bf16 costs in accuracy, beside what it gains in speed
        drift = precision.precision_drift(spec.config, spec.image_size, spec.num_classes)
        outcome["precision"] = drift
        say(f"bfloat16 vs float32 logits on {drift['num_images']} fixed images: top-1 agreement "
            f"{drift['top1_agreement']:.2f}, relative error {drift['relative_error']:.2e}")
    if spec.exports:
        outcome["exports"] = exports.export_benchmark(
            spec.config, spec.image_size, spec.batch_sizes[0], log=say)
    return outcome


def _measure(spec, mode, dtype, batch, peer, say, label):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, spec.image_size, spec.image_size, 3)).astype("float32")
    labels = rng.integers(0, spec.num_classes, (batch,))
    say(f"{label}: building and compiling")
    with models.dtype_policy(policy_name(mode, dtype)):
        model = models.MlpMixer(**dataclasses.asdict(spec.config), num_classes=spec.num_classes,
                                input_shape=(spec.image_size, spec.image_size, 3),
                                classifier_activation=None, name="mixer")
        peer_model = None
        if peer is not None and not (mode == "training" and peer.inference_only):
            peer_model = peer.build(dtype)
    step = _model_step(model, spec, mode, images, labels)
    peer_step = None
    if peer_model is not None:
        peer_step = (peer.eager_step(peer_model, images) if peer.inference_only
                     else _model_step(peer_model, spec, mode, images, labels))
    gemms = reference_gemms(spec.config, spec.image_size, batch)
    matmuls = {name: matmul_step(shape, dtype) for name, shape in gemms.items()}

    for _ in range(spec.warmup):
        step()
        if peer_step:
            peer_step()
    calls = {name: _calls_per_block(fn) for name, fn in matmuls.items()}
    times = dict(model=[], peer=[], **{f"matmul_{name}": [] for name in matmuls})
    with PeakMemory() as memory:
        for i in range(spec.repeats):
            for name, fn in matmuls.items():
                times[f"matmul_{name}"].append(_time(fn, calls[name]) / calls[name])
            times["model"].append(_time(step))
            if peer_step:
                times["peer"].append(_time(peer_step))
            say(f"{label}: repeat {i + 1}/{spec.repeats}: {batch / times['model'][-1]:.2f} img/s")

    work = flops(spec.config, spec.image_size, spec.num_classes) * batch
    work *= TRAINING_FLOPS_FACTOR if mode == "training" else 1
    shapes = {name: dict(shape=list(shape), **_rates(gemm_flops(shape), times[f"matmul_{name}"]))
              for name, shape in gemms.items()}
    best = max(shapes, key=lambda name: shapes[name]["gflops"])
    result = dict(
        img_per_s=batch / min(times["model"]),
        img_per_s_median=batch / statistics.median(times["model"]),
        model_gflops=work / min(times["model"]) / 1e9,
        matmul_dtype=dtype,
        matmul_gflops=shapes[best]["gflops"],
        matmul_gflops_median=shapes[best]["gflops_median"],
        matmul_shape=best,
        matmul_shapes=shapes,
        peak_mib=memory.peak_mib,
        seconds=times,
    )
    result["fraction_of_matmul"] = result["model_gflops"] / result["matmul_gflops"]
    if mode == "training":
        result["optimizer"] = spec.optimizer
    if peer_step:
        peer_rate = batch / min(times["peer"])
        result["peer"] = dict(name=peer.name, img_per_s=peer_rate,
                              ratio=result["img_per_s"] / peer_rate)
    say(f"{label}: {result['img_per_s']:.2f} img/s, {result['model_gflops']:.1f} GFLOP/s = "
        f"{result['fraction_of_matmul']:.2f} of the same-run {dtype} GEMM "
        f"({result['matmul_gflops']:.1f} GFLOP/s, {best} shape)"
        + (f"; {result['peer']['ratio']:.2f}x {peer.name}" if peer_step else ""))
    return result


def _rates(work, seconds):
    """GFLOP/s of the best and of the median time."""
    return dict(gflops=work / min(seconds) / 1e9, gflops_median=work / statistics.median(seconds) / 1e9)


def _calls_per_block(fn):
    """How many calls of ``fn`` take about :data:`MATMUL_SECONDS` (after one warm-up call)."""
    _time(fn)
    return max(1, min(50, round(MATMUL_SECONDS / max(_time(fn), 1e-6))))


def _time(fn, calls=1):
    start = time.perf_counter()
    for _ in range(calls):
        out = fn()
    _block(out)
    return time.perf_counter() - start


def _block(value):
    """Wait for an asynchronously dispatched result (JAX, GPUs)."""
    if value is not None and hasattr(value, "shape") and not hasattr(value, "__array_interface__"):
        first = keras.ops.reshape(value, (-1,))[0]
        keras.ops.convert_to_numpy(keras.ops.cast(first, "float32"))  # NumPy has no bfloat16


def policy_name(mode, dtype):
    """The Keras dtype policy of a row: bfloat16 inference, mixed_bfloat16 training."""
    if dtype == "float32":
        return "float32"
    return "mixed_bfloat16" if mode == "training" else "bfloat16"


def _model_step(model, spec, mode, images, labels):
    """A zero-argument callable running one inference or training step of a Keras model."""
    model.compile(
        optimizer=make_optimizer(spec.optimizer),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=spec.jit_compile,
    )
    if mode == "inference":
        return lambda: model.predict_on_batch(images)
    return lambda: model.train_on_batch(images, labels)


def make_optimizer(name):
    """The training rows' optimizer (:data:`OPTIMIZERS`): the recipe's defaults, or Keras' AdamW."""
    if name == "keras":
        return keras.optimizers.AdamW(1e-4)
    return training.build_optimizer(training.TrainConfig(), total_steps=1000, warmup_steps=10)


def apply_limits(results):
    """Add the machine's limit per dtype, the best same-run GEMM across backends, to each row.

    Each measured row gets ``limit_gflops`` and ``fraction_of_limit``; returns
    ``{dtype: {"gflops", "backend", "shape"}}``.
    """
    limits = {}
    for row in results:
        if "error" in row:
            continue
        best = limits.get(row["dtype"])
        if best is None or row["matmul_gflops"] > best["gflops"]:
            limits[row["dtype"]] = dict(gflops=row["matmul_gflops"], backend=row["backend"],
                                        shape=row.get("matmul_shape"))
    for row in results:
        if "error" not in row:
            row["limit_gflops"] = limits[row["dtype"]]["gflops"]
            row["fraction_of_limit"] = row["model_gflops"] / row["limit_gflops"]
    return limits
