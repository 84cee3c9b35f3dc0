"""The data benchmark: what the input pipeline costs as a data set grows (a report, not a test).

For each size (10k, 100k, 1M images by default) :func:`run` writes a synthetic
image folder of small JPEGs (a few hundred distinct images encoded once, written
as files that differ by a JPEG comment), measures, and deletes it:

- **first start**: ``data.load_splits`` on a folder never seen (the folder scan and
  the bad-image check, which decodes every image once), in a fresh process, as
  ``keras-mixer train --data FOLDER`` starts; also the wall time of that process
  (Python, TensorFlow and Keras imports included);
- **decode pass**: one pass of decoding every image with the pipeline's decoder
  (tf.data, every core, a fresh process): the first start should cost no more
  (first start and decode pass: the best of ``repeats`` attempts, interleaved);
- **second start**: the first start again: the check's results are remembered;
- **pipeline img/s**: training batches (inception crop + flip to the model's size)
  from the folder, decoded as they are read (no in-memory cache);
- **records**: ``keras-mixer prepare`` (seconds), the start on the records and
  their pipeline img/s;

and once, on the same machine, the training step rate (img/s) of the Mixer
variants (S/16 and B/16 at 224, batch 64) on one backend, to which the pipeline's
img/s compares. Sizes that would leave less than ``min_free_gb`` of free disk are
skipped (and say so).
"""

import dataclasses
import datetime
import functools
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time

import numpy as np
import tensorflow as tf

from keras_mixer import data, image_check, records, training
from keras_mixer.backend import BackendCallError, run_under
from keras_mixer.benchmark.training import training_throughput
from keras_mixer.files import write_text

DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
BLOCK = 4096  # a file takes whole disk blocks


@dataclasses.dataclass
class DataSpec:
    """What one data benchmark measures."""

    sizes: tuple = DEFAULT_SIZES
    image_side: int = 64
    distinct: int = 256
    classes: int = 100
    image_size: int = 224
    batch_size: int = 64
    pipeline_batches: int = 20
    variants: tuple = ("S/16", "B/16")
    model_steps: int = 2
    repeats: int = 2
    backend: str = "jax"
    records: bool = True
    work_dir: str = tempfile.gettempdir()
    min_free_gb: float = 20.0

    suite = "data"

    def __post_init__(self):
        self.sizes, self.variants = tuple(self.sizes), tuple(self.variants)
        for name in ("image_side", "distinct", "classes", "image_size", "batch_size",
                     "pipeline_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        if not self.sizes or min(self.sizes) < 10 * self.classes:
            raise ValueError(f"sizes must be at least 10 images per class ({10 * self.classes}), "
                             f"got {self.sizes}.")
        if self.repeats < 1:
            raise ValueError(f"repeats must be a positive integer, got {self.repeats}.")
        if self.model_steps < 0:
            raise ValueError(f"model_steps must be >= 0, got {self.model_steps}.")

    def to_json(self):
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- host


def lscpu():
    """``{"model": CPU model, "flags": [...], "cpus": N}`` from ``lscpu`` (else /proc/cpuinfo)."""
    fields = {}
    try:
        output = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        output = ""
    if not output:
        try:
            with open("/proc/cpuinfo") as f:
                output = f.read()
        except OSError:
            output = ""
    for line in output.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    return {"model": fields.get("model name") or platform.processor() or platform.machine(),
            "flags": (fields.get("flags") or "").split(), "cpus": os.cpu_count()}


# --------------------------------------------------------------------------- synthetic folders


def distinct_jpegs(count, side, seed=0):
    """``count`` different small JPEGs (smooth random colours plus noise), as bytes."""
    rng = np.random.default_rng(seed)
    blobs = []
    for _ in range(count):
        coarse = rng.uniform(0, 255, (1, 4, 4, 3)).astype("float32")
        image = tf.image.resize(coarse, (side, side)).numpy()[0] + rng.normal(0, 12, (side, side, 3))
        blobs.append(tf.io.encode_jpeg(np.clip(image, 0, 255).astype("uint8"), quality=90).numpy())
    return blobs


def variant(jpeg, index):
    """``jpeg`` with a comment segment naming ``index``: another file, the same pixels."""
    comment = f"keras-mixer benchmark {index}".encode()
    return jpeg[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + jpeg[2:]


def write_folder(root, count, classes, blobs):
    """``root/cNNN/NNNNNNN.jpg``: ``count`` JPEG files in ``classes`` class folders.

    One writer: on the machine this was measured on, two processes creating files at
    once were 10x slower than one (the file system serializes creation).
    """
    per_class = -(-count // classes)
    written = 0
    for c in range(classes):
        folder = os.path.join(root, f"c{c:03d}")
        os.makedirs(folder, exist_ok=True)
        for j in range(min(per_class, count - written)):
            with open(os.path.join(folder, f"{j:07d}.jpg"), "wb") as f:
                f.write(variant(blobs[(c * 7 + j) % len(blobs)], written))
            written += 1
    return written


def free_gb(path):
    return shutil.disk_usage(path).free / 2**30


def needed_gb(count, blobs, with_records):
    """Disk space a folder of ``count`` files (whole blocks) and its records take."""
    mean = float(np.mean([len(b) for b in blobs])) + 40
    files = count * BLOCK * max(1, -(-mean // BLOCK))
    return (files + (count * (mean + 32) if with_records else 0)) / 2**30


# --------------------------------------------------------------------------- measurements


def start(name, image_size, batch_size):
    """A fresh process's data start: ``load_splits`` (scan + check) and the first training batch.

    Runs under :func:`keras_mixer.backend.run_under`; returns seconds and counts.
    """
    begin = time.perf_counter()
    train, test = data.load_splits(name)
    loaded = time.perf_counter() - begin
    dataset = data.make_dataset(train, batch_size, image_size, training=True, repeat=True,
                                cache=False)
    next(iter(dataset))
    return {"load_splits_s": loaded, "first_batch_s": time.perf_counter() - begin - loaded,
            "train": train.total_examples, "test": test.total_examples}


def _timed_start(name, spec):
    begin = time.perf_counter()
    result = run_under("tensorflow", "keras_mixer.benchmark.data:start", name, spec.image_size,
                       spec.batch_size)
    result["process_s"] = time.perf_counter() - begin
    return result


def decode_pass(folder):
    """Seconds to decode every image of ``folder`` once with the pipeline's decoder (tf.data,
    every core), in a fresh process (under ``run_under``) as a start is."""
    paths = [os.path.join(root, name) for root, _, names in os.walk(folder)
             if image_check.CACHE_FOLDER not in root for name in names]
    begin = time.perf_counter()
    decoded = tf.data.Dataset.from_tensor_slices(list(paths)).map(
        lambda path: tf.shape(data.read_image(path)), num_parallel_calls=tf.data.AUTOTUNE)
    for _ in decoded.batch(1024).as_numpy_iterator():
        pass
    return time.perf_counter() - begin


def pipeline_rate(name, spec):
    """Training batches per second x batch size from ``name``, decoded as read (no cache)."""
    train = data.load_source(name, "train")
    dataset = data.make_dataset(train, spec.batch_size, spec.image_size, training=True,
                                augment=data.Augmentation(flip=True), repeat=True, cache=False)
    return data.pipeline_throughput(dataset, spec.pipeline_batches)


def step_rate(variant_name, image_size, batch_size, steps):
    """Training img/s of a paper variant on fixed in-memory batches (under ``run_under``)."""
    config = training.TrainConfig(variant=variant_name, image_size=image_size,
                                  batch_size=batch_size, export=False)
    model = training.build_model(config, 1000)
    training.compile_model(model, config, total_steps=1000, warmup_steps=10)
    return training_throughput(model, batch_size, steps, warmup=1)


def measure_size(count, spec, blobs, log=print):
    """Every measurement of one synthetic folder of ``count`` images (deleted after)."""
    need = needed_gb(count, blobs, spec.records)
    free = free_gb(spec.work_dir)
    if free - need < spec.min_free_gb:
        return {"images": count, "skipped": f"needs {need:.1f} GB of disk; {free:.1f} GB free "
                                            f"would leave less than {spec.min_free_gb:g} GB"}
    work = tempfile.mkdtemp(prefix=f"keras-mixer-data-{count}-", dir=spec.work_dir)
    folder, out = os.path.join(work, "images"), os.path.join(work, "records")
    row = {"images": count}
    try:
        log(f"[{count:,}] writing {count:,} JPEGs ({spec.image_side}px) into {folder}")
        begin = time.perf_counter()
        write_folder(folder, count, spec.classes, blobs)
        row["generate_s"] = time.perf_counter() - begin
        firsts, passes = [], []
        for attempt in range(spec.repeats):  # the best of each: the machine may be shared
            shutil.rmtree(os.path.join(folder, image_check.CACHE_FOLDER), ignore_errors=True)
            log(f"[{count:,}] first start (a fresh process; attempt {attempt + 1})")
            firsts.append(_timed_start(folder, spec))
            log(f"[{count:,}] {firsts[-1]}; one decode pass (a fresh process)")
            passes.append(run_under("tensorflow", "keras_mixer.benchmark.data:decode_pass", folder))
            log(f"[{count:,}] {passes[-1]:.1f} s")
        row["first_start"] = min(firsts, key=lambda start: start["load_splits_s"])
        row["first_start_attempts_s"] = [start["load_splits_s"] for start in firsts]
        row["decode_pass_s"], row["decode_pass_attempts_s"] = min(passes), passes
        log(f"[{count:,}] second start")
        row["second_start"] = _timed_start(folder, spec)
        log(f"[{count:,}] {row['second_start']}; pipeline")
        row["pipeline_img_s"] = pipeline_rate(folder, spec)
        log(f"[{count:,}] folder pipeline {row['pipeline_img_s']:.0f} img/s")
        if spec.records:
            begin = time.perf_counter()
            records.prepare(folder, out, log=lambda line: None)
            row["prepare_s"] = time.perf_counter() - begin
            row["records_start"] = _timed_start(out, spec)
            row["records_pipeline_img_s"] = pipeline_rate(out, spec)
            log(f"[{count:,}] prepare {row['prepare_s']:.1f} s, records start "
                f"{row['records_start']}, records pipeline {row['records_pipeline_img_s']:.0f} img/s")
    except BackendCallError as error:
        row["error"] = str(error)[-2000:]
        log(f"[{count:,}] FAILED: {error}")
    finally:
        begin = time.perf_counter()
        shutil.rmtree(work, ignore_errors=True)
        row["delete_s"] = time.perf_counter() - begin
    return row


def run(spec, json_path=None, markdown_path=None, log=print):
    """Measure every size of ``spec`` and the model's step rates; write the report.

    Returns the report dict (``suite``, ``spec``, ``host``, ``sizes``, ``models``, ``notes``).
    """
    log = functools.partial(log, flush=True) if log is print else log
    report = {"suite": "data", "spec": spec.to_json(), "host": lscpu(),
              "date": datetime.date.today().isoformat(), "sizes": [], "models": {}, "notes": []}
    blobs = distinct_jpegs(spec.distinct, spec.image_side)
    for count in spec.sizes:
        row = measure_size(count, spec, blobs, log)
        report["sizes"].append(row)
        if "skipped" in row:
            report["notes"].append(f"{count:,} images not measured: {row['skipped']}")
            log(f"[{count:,}] skipped: {row['skipped']}")
        _write(report, json_path, markdown_path)
    for name in spec.variants if spec.model_steps else ():
        log(f"=== {name} training steps at {spec.image_size}px, batch {spec.batch_size} "
            f"({spec.backend})")
        try:
            report["models"][name] = run_under(
                spec.backend, "keras_mixer.benchmark.data:step_rate", name, spec.image_size,
                spec.batch_size, spec.model_steps, capture=False)
        except BackendCallError as error:
            report["notes"].append(f"{name} step rate not measured: {error}")
        _write(report, json_path, markdown_path)
    log(markdown(report))
    return report


def _write(report, json_path, markdown_path):
    if json_path:
        write_text(json_path, json.dumps(report, indent=1) + "\n")
    if markdown_path:
        write_text(markdown_path, markdown(report))


# --------------------------------------------------------------------------- report


def _s(value):
    return "" if value is None else f"{value:.1f}"


def markdown(report):
    """The report as Markdown: the scaling table, the model step rates, the targets."""
    spec, host = report["spec"], report["host"]
    lines = [
        f"# Data pipeline scaling ({report['date']})", "",
        f"Host: {host['model']}, {host['cpus']} CPUs. Flags (lscpu): {' '.join(host['flags'])}.", "",
        f"Synthetic folders of {spec['image_side']}px JPEGs ({spec['distinct']} distinct images, "
        f"files differing by a JPEG comment), {spec['classes']} class folders, every 10th image "
        f"held out as the test split. Starts run in a fresh process (`load_splits`: scan + "
        f"bad-image check); `process` adds Python, TensorFlow and Keras start-up. Pipelines: "
        f"training batches of {spec['batch_size']} at {spec['image_size']}px (inception crop + "
        f"flip), decoded as read.", "",
        "| images | generate s | first start s | (process s) | second start s | (process s) "
        "| decode pass s | first start / decode pass | folder pipeline img/s | prepare s "
        "| records start s | records pipeline img/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["sizes"]:
        if "skipped" in row or "error" in row:
            lines.append(f"| {row['images']:,} | {row.get('skipped') or row.get('error')[:200]} "
                         "|||||||||||")
            continue
        first, second = row["first_start"], row["second_start"]
        records_start = row.get("records_start") or {}
        lines.append(
            f"| {row['images']:,} | {_s(row['generate_s'])} | {_s(first['load_splits_s'])} "
            f"| {_s(first['process_s'])} | {_s(second['load_splits_s'])} | {_s(second['process_s'])} "
            f"| {_s(row['decode_pass_s'])} | {first['load_splits_s'] / row['decode_pass_s']:.2f} "
            f"| {row['pipeline_img_s']:.0f} | {_s(row.get('prepare_s'))} "
            f"| {_s(records_start.get('load_splits_s'))} "
            f"| {_s(row.get('records_pipeline_img_s'))} |")
    if report["models"]:
        lines += ["", f"Training step rate on the same machine ({spec['backend']}, "
                      f"{spec['image_size']}px, batch {spec['batch_size']}, in-memory batches):", "",
                  "| model | train img/s |", "|---|---|"]
        lines += [f"| {name} | {rate:.2f} |" for name, rate in report["models"].items()]
    lines += targets(report)
    notes = list(report["notes"])
    return "\n".join(lines + ([""] + [f"- {note}" for note in notes] if notes else [])) + "\n"


def targets(report):
    """Markdown lines: each target of the data path, met or not, by the report's numbers."""
    rows = [r for r in report["sizes"] if "first_start" in r]
    if not rows:
        return []
    largest = max(rows, key=lambda r: r["images"])
    second = largest["second_start"]["load_splits_s"]
    lines = ["", "Targets:", "",
             f"- second start of the {largest['images']:,}-image folder within 30 s: "
             f"{second:.1f} s ({'met' if second <= 30 else 'NOT met'}; the process, "
             f"imports included: {largest['second_start']['process_s']:.1f} s)"]
    for row in rows:
        ratio = row["first_start"]["load_splits_s"] / row["decode_pass_s"]
        lines.append(f"- first start no slower than one decoding pass, {row['images']:,} images: "
                     f"{ratio:.2f} x the pass")
    model = report["models"].get("B/16")
    if model:
        slowest = min(min(r["pipeline_img_s"], r.get("records_pipeline_img_s") or np.inf)
                      for r in rows)
        lines.append(f"- pipeline faster than the B/16 training step: slowest pipeline "
                     f"{slowest:.0f} img/s vs {model:.2f} img/s "
                     f"({'met' if slowest > model else 'NOT met'}, {slowest / model:.0f} x)")
    return lines
