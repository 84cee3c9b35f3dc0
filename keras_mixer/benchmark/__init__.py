"""Benchmarks of a Mixer on each Keras backend (reports, not tests).

Two suites, each a spec run by :func:`run` on every backend in its own
subprocess (Keras fixes the backend at import; :func:`keras_mixer.backend.run_under`):

- :class:`BenchmarkSpec` (:mod:`.throughput`): inference and training img/s and
  peak memory as a fraction of same-run reference GEMMs in the row's dtype (the
  backend's own best, and the best across backends: the machine's limit), beside
  peer implementations (:mod:`.peers`), optionally with exported artifacts and the
  served model over gRPC (:mod:`.exports`);
- :class:`TrainingSpec` (:mod:`.training`): training img/s per backend, tf.data
  input-pipeline img/s and CIFAR-10 top-1 after a fixed number of steps.

:mod:`.report` writes the results as JSON and Markdown; ``keras-mixer benchmark``
(:mod:`keras_mixer.cli.benchmark`) is the command line.
"""

import sys

from keras_mixer.backend import BackendCallError, run_under
from keras_mixer.benchmark.exports import export_benchmark
from keras_mixer.benchmark.report import (MAX_ISA, host_info, markdown, max_isa_environment,
                                          present_features, write_report)
from keras_mixer.benchmark.throughput import (DTYPES, MODES, OPTIMIZERS, BenchmarkSpec, apply_limits,
                                             run_backend)
from keras_mixer.benchmark.training import TrainingSpec, find_cifar
from keras_mixer.config import flops
from keras_mixer.startup import BACKENDS

__all__ = ["BACKENDS", "DTYPES", "MAX_ISA", "MODES", "OPTIMIZERS", "BenchmarkSpec", "TrainingSpec", "apply_limits",
           "export_benchmark",
           "flops", "host_info", "markdown", "run", "run_backend", "succeeded", "write_report"]

# Measured on an AMX machine: --xla_cpu_max_isa=AVX2 left JAX's float32 GEMM as fast as uncapped.
JAX_MAX_ISA_NOTE = ("jax: --xla_cpu_max_isa caps the code XLA generates, not the matmul library "
                    "it calls: its GEMMs run at full speed, so its rows are no proxy")

WORKERS = {
    "throughput": "keras_mixer.benchmark.throughput:worker",
    "training": "keras_mixer.benchmark.training:worker",
}
PIPELINES = "keras_mixer.benchmark.training:pipelines"


def run(spec, backends=BACKENDS, json_path=None, markdown_path=None, log=print):
    """Benchmark ``spec`` (a :class:`BenchmarkSpec` or :class:`TrainingSpec`) on each backend.

    Each backend runs in its own subprocess, printing its progress; a backend
    that fails is reported and the others go on. Returns the report dict
    (:mod:`.report`); writes it as JSON and as Markdown when paths are given.
    """
    backends = tuple(backends)
    unknown = set(backends) - set(BACKENDS)
    if unknown or not backends:
        raise ValueError(f"Unknown backend(s) {sorted(unknown)}; choose from {BACKENDS}.")
    report = dict(suite=spec.suite, spec=spec.to_json(), host=host_info(), backends={},
                  results=[], notes=[])
    max_isa = getattr(spec, "max_isa", None)
    options = dict(env=max_isa_environment(max_isa))
    if max_isa:
        report["host"]["max_isa"] = max_isa
        log(f"kernels capped at {max_isa.upper()}: {options['env']}")
        if "jax" in backends:
            report["notes"].append(JAX_MAX_ISA_NOTE)
    if spec.suite == "training" and spec.cifar_steps:
        options["cifar_root"], why_not = find_cifar(spec, log)
        if why_not:
            log(why_not)
            report["notes"].append(why_not)
    for backend in backends:
        log(f"=== {backend}: a subprocess with KERAS_BACKEND={backend}")
        try:
            outcome = _run_under(backend, WORKERS[spec.suite], spec.to_json(), **options)
        except BackendCallError as error:
            outcome = dict(error=str(error))
            log(f"=== {backend}: FAILED: {error}")
        report["backends"][backend] = {k: v for k, v in outcome.items() if k != "results"}
        report["results"].extend(outcome.get("results", []))
    for row in report["results"]:  # rows compared later still say what they ran on
        row.update(cpu=report["host"]["cpu"], cpu_features=present_features(report["host"]),
                   max_isa=max_isa)
    if spec.suite == "throughput":
        report["limits"] = apply_limits(report["results"])
    if spec.suite == "training" and spec.pipeline_batches:
        log("=== input pipelines: tf.data, a subprocess with KERAS_BACKEND=tensorflow")
        try:
            report["pipelines"] = _run_under("tensorflow", PIPELINES, spec.to_json())
        except BackendCallError as error:
            report["notes"].append(f"input pipelines: {error}")
            log(f"=== input pipelines: FAILED: {error}")
    write_report(report, json_path, markdown_path, log)
    return report


def _run_under(backend, function, *args, **kwargs):
    sys.stdout.flush()  # our progress lines before the subprocess's
    return run_under(backend, function, *args, capture=False, **kwargs)


def succeeded(report):
    """Whether everything the report's spec asked for was measured."""
    return not report["notes"] and not any(
        "error" in entry for entry in [*report["results"], *report["backends"].values()])
