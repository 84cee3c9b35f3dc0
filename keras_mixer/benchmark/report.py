"""Benchmark reports: the host they ran on, and their JSON and Markdown files (written atomically).

A report is a JSON-serializable dict with ``suite`` (``"throughput"`` or
``"training"``), ``spec``, ``host``, ``backends`` (per-backend information:
device, versions, notes, errors), ``results`` (one row per measurement) and
``notes``; the training suite adds ``pipelines``.
"""

import json
import os
import platform

from keras_mixer.config import flops
from keras_mixer.files import write_text

# /proc/cpuinfo flags that decide which matmul kernels the libraries can use.
CPU_FEATURES = {
    "AVX2": ("avx2",),
    "AVX-512": ("avx512f",),
    "AVX512_BF16": ("avx512_bf16",),
    "AMX_BF16": ("amx_bf16",),
    "AMX_INT8": ("amx_int8",),
}

# ``--max-isa``: run every backend as if the CPU stopped at an older instruction set, through
# each kernel library's own switch (oneDNN, MKL, ATen, XLA CPU), so that an AMX machine can
# stand in for one without AMX. Kernels outside those libraries (e.g. Eigen, and the matmul
# library that XLA CPU calls) are not capped.
MAX_ISA = {
    "avx2": dict(oneDNN="AVX2", MKL="AVX2", ATen="avx2", XLA="AVX2"),
    "avx512": dict(oneDNN="AVX512_CORE", MKL="AVX512", ATen="avx512", XLA="AVX512"),
}


# --------------------------------------------------------------------------- host


def host_info(cpuinfo="/proc/cpuinfo"):
    """The machine: CPU model, core count, CPU features (:data:`CPU_FEATURES`), Python, OS."""
    name, flags = _read_cpuinfo(cpuinfo)
    return dict(cpu=name or platform.processor() or platform.machine(),
                cpu_count=os.cpu_count(),
                cpu_features=None if flags is None else {
                    feature: any(flag in flags for flag in names)
                    for feature, names in CPU_FEATURES.items()},
                python=platform.python_version(), platform=platform.platform())


def _read_cpuinfo(path):
    """``(model name, set of flags)`` of the first CPU; ``None`` for what the file does not say."""
    name = flags = None
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and name is None:
                    name = value.strip()
                elif key in ("flags", "Features") and flags is None:  # x86, ARM
                    flags = set(value.split())
                if name is not None and flags is not None:
                    break
    except OSError:
        pass
    return name, flags


def max_isa_environment(max_isa, environ=os.environ):
    """Environment variables that cap the kernels at ``max_isa`` (a :data:`MAX_ISA` key, or ``None``)."""
    if max_isa is None:
        return {}
    if max_isa not in MAX_ISA:
        raise ValueError(f"Unknown max_isa {max_isa!r}; choose from {sorted(MAX_ISA)}.")
    isa = MAX_ISA[max_isa]
    xla_flags = " ".join(filter(None, [environ.get("XLA_FLAGS", ""), f"--xla_cpu_max_isa={isa['XLA']}"]))
    return dict(ONEDNN_MAX_CPU_ISA=isa["oneDNN"], MKL_ENABLE_INSTRUCTIONS=isa["MKL"],
                ATEN_CPU_CAPABILITY=isa["ATen"], XLA_FLAGS=xla_flags)


def present_features(host):
    """The names of :data:`CPU_FEATURES` the host has (``None``: unknown)."""
    features = host.get("cpu_features")
    return None if features is None else [name for name, present in features.items() if present]


def describe_host(host):
    """``"AMD EPYC (2 cores; AVX2, AVX-512, AVX512_BF16; no AMX_BF16, no AMX_INT8)"``."""
    features = host.get("cpu_features")
    text = f"{host['cpu']} ({host['cpu_count']} cores"
    if features is not None:
        have = [name for name, present in features.items() if present]
        lack = [name for name, present in features.items() if not present]
        text += "; " + "; ".join(filter(None, [", ".join(have),
                                               lack and "no " + ", no ".join(lack)]))
    if host.get("max_isa"):
        text += f"; kernels capped at {host['max_isa'].upper()} by --max-isa"
    return text + ")"


# --------------------------------------------------------------------------- files


def write_report(report, json_path=None, markdown_path=None, log=print):
    """Write ``report`` as JSON and as Markdown (:func:`markdown`), each atomically."""
    if json_path:
        write_text(json_path, json.dumps(report, indent=2) + "\n")
        log(f"wrote {json_path}")
    if markdown_path:
        write_text(markdown_path, markdown(report))
        log(f"wrote {markdown_path}")


def markdown(report):
    """A report's tables in Markdown, then its notes and errors."""
    if report.get("suite", "throughput") == "training":
        lines = _training_markdown(report)
    else:
        lines = _throughput_markdown(report) + _exports_markdown(report)
    notes = list(report.get("notes", []))
    notes += [f"{b}: {info['error']}" for b, info in report["backends"].items() if "error" in info]
    notes += [f"{b}: {note}" for b, info in report["backends"].items()
              for note in info.get("notes", [])]
    return "\n".join(lines + ([""] + [f"- {note}" for note in notes] if notes else [])) + "\n"


def _throughput_markdown(report):
    spec = report["spec"]
    lines = [
        f"Mixer {spec['name']} at {spec['image_size']}x{spec['image_size']}, "
        f"{flops(spec['config'], spec['image_size'], spec['num_classes']) / 1e9:.2f} GFLOP/image "
        f"forward (training: 3x); host: {describe_host(report['host'])}. Reference GEMMs run "
        "in the row's dtype, interleaved with the model: `GEMM` is the backend's best of the "
        "channel-MLP, token-MLP and square shapes in the same run; `limit` is the best GEMM "
        "across backends" + "".join(
            f"; {dtype} limit {limit['gflops']:.4g} GFLOP/s ({limit['backend']}, "
            f"{limit['shape']})" for dtype, limit in report.get("limits", {}).items()) + "."
        + (f" Training steps use the {spec.get('optimizer', 'keras')} optimizer "
           "(`--optimizer`)." if "training" in spec.get("modes", ()) else ""),
        "",
        "| backend | device | mode | dtype | batch | img/s | model GFLOP/s | GEMM GFLOP/s "
        "| of GEMM | of limit | peak MiB | peer | peer img/s | ours/peer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['backend']} | {r.get('device', '')} | {r['mode']} | {r['dtype']} "
                         f"| {r['batch']} | error: {r['error']} ||||||||| ")
            continue
        peer = r.get("peer") or {}
        lines.append(
            f"| {r['backend']} | {r['device']} | {r['mode']} | {r['dtype']} | {r['batch']} "
            f"| {r['img_per_s']:.3g} | {r['model_gflops']:.3g} | {r['matmul_gflops']:.3g} "
            f"| {r['fraction_of_matmul']:.2f} | {_fmt(r.get('fraction_of_limit'))} "
            f"| {r['peak_mib']:.0f} | {peer.get('name', '')} "
            f"| {_fmt(peer.get('img_per_s'))} | {_fmt(peer.get('ratio'))} |"
        )
    return lines


def _exports_markdown(report):
    rows = [(backend, row) for backend, info in report["backends"].items()
            if isinstance(info.get("exports"), list) for row in info["exports"]]
    artifacts = [(b, row) for b, row in rows if row["artifact"] != "served"]
    served = [(b, row) for b, row in rows if row["artifact"] == "served"]
    lines = []
    if artifacts:
        lines += ["", "| exported from | artifact | img/s | latency ms (1 thread) | size MB "
                      "| max abs err |", "|---|---|---|---|---|---|"]
    for backend, row in artifacts:
        size, error = row.get("size_bytes"), row.get("max_abs_error")
        lines.append(
            f"| {backend} | {row['artifact']} | {_fmt(row.get('images_per_second'))} "
            f"| {_fmt(row.get('latency_ms'))} | {_fmt(size and size / 1e6)} "
            f"| {'' if error is None else f'{error:.1e}'} |"
        )
    if served:
        lines += ["", "SavedModel `serving_default` called directly vs served over gRPC on loopback "
                      "(development server, one client per caller); `of direct`: img/s over the "
                      "best direct img/s at that batch.", "",
                  "| exported from | path | batch | callers | img/s | p50 ms | p99 ms | of direct |",
                  "|---|---|---|---|---|---|---|---|"]
    for backend, row in served:
        lines.append(
            f"| {backend} | {row['path']} | {row['batch']} | {row['clients']} "
            f"| {_fmt(row['images_per_second'], '.3g')} | {_fmt(row['p50_ms'], '.3g')} "
            f"| {_fmt(row['p99_ms'], '.3g')} | {_fmt(row.get('of_direct'))} |")
    return lines


def _training_markdown(report):
    spec = report["spec"]
    results = report["results"]  # one per backend that ran; failures are in the notes
    first = results[0]["backend"] if results else "first"
    lines = [
        f"Training: Mixer {spec['variant']} at {spec['image_size']}x{spec['image_size']}, "
        f"batch {spec['batch_size']}, {spec['steps']} timed steps; "
        f"host: {describe_host(report['host'])}.",
        "",
        f"| backend | device | params | train img/s | vs {first} "
        "| CIFAR-10 top-1 | CIFAR steps | CIFAR seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['backend']} | {r['device']} | {r['params']} | {r['train_img_per_s']:.1f} "
            f"| {r['train_img_per_s'] / results[0]['train_img_per_s']:.2f} "
            f"| {_fmt(r.get('cifar_top1'), '.4f')} | {r.get('cifar_steps', '')} "
            f"| {_fmt(r.get('cifar_seconds'), '.1f')} |"
        )
    pipelines = report.get("pipelines")
    if pipelines:
        reference = next(iter(pipelines.values()))
        lines += ["", f"Input pipelines (tf.data, digits -> {spec['image_size']}px, "
                      f"batch {spec['batch_size']}):", "",
                  f"| pipeline | img/s | vs {next(iter(pipelines))} |", "|---|---|---|"]
        lines += [f"| {name} | {rate:.1f} | {rate / reference:.2f} |"
                  for name, rate in pipelines.items()]
    return lines


def _fmt(value, spec=".2f"):
    return "" if value is None else format(value, spec)
