"""The benchmark suite: FLOP counts, and the runner end to end on a tiny config (no timing asserts)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers.tiny import TINY

import keras
from keras_mixer import MlpMixer, benchmark
from keras_mixer.models import MixerConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = MixerConfig(**TINY)


def test_flops_b16_matches_paper_figure():
    assert benchmark.flops("B/16", 224) == pytest.approx(25.2e9, rel=2e-3)


def test_flops_equals_matmul_work_of_the_built_model():
    """Independent count: every kernel's size times how many vectors it multiplies."""
    height, width, num_classes = 24, 40, 7
    model = MlpMixer(**TINY, input_shape=(height, width, 3), num_classes=num_classes)
    tokens = (height // 8) * (width // 8)
    multiply_adds = 0
    for weight in model.weights:
        if "kernel" not in weight.path:
            continue
        size = int(np.prod(weight.shape))
        if weight.path.startswith("stem") or "channel_mixing" in weight.path:
            multiply_adds += size * tokens  # applied to every token
        elif "token_mixing" in weight.path:
            multiply_adds += size * TINY["hidden_dim"]  # applied to every channel
        else:
            multiply_adds += size  # the head, once per image
    assert benchmark.flops(TINY_CONFIG, (height, width), num_classes) == 2 * multiply_adds


def test_flops_rejects_indivisible_image_size():
    with pytest.raises(ValueError, match="divisible"):
        benchmark.flops("B/16", 225)


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(batch_sizes=(0,)), "batch"), (dict(dtypes=("float16",)), "dtype"),
     (dict(modes=("serving",)), "mode"), (dict(repeats=0), "repeats")],
)
def test_spec_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        benchmark.BenchmarkSpec(TINY_CONFIG, image_size=32, **kwargs)


def test_run_rejects_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        benchmark.run(benchmark.BenchmarkSpec(TINY_CONFIG, image_size=32), backends=("mxnet",))


def test_run_backend_in_process_reports_every_case():
    spec = benchmark.BenchmarkSpec(TINY_CONFIG, name="tiny", image_size=32, batch_sizes=(2,),
                                   repeats=1, warmup=1, peers=True)
    outcome = benchmark.run_backend(spec, log=lambda msg: None)
    assert outcome["backend"] == keras.backend.backend()
    assert [(r["mode"], r["batch"]) for r in outcome["results"]] == [
        ("inference", 2), ("training", 2)]
    for result in outcome["results"]:
        assert "error" not in result, result
        assert result["img_per_s"] > 0 and result["matmul_gflops"] > 0
        assert result["peak_mib"] > 0
        assert result["fraction_of_matmul"] == pytest.approx(
            result["model_gflops"] / result["matmul_gflops"])
        if "peer" in result:
            assert result["peer"]["ratio"] == pytest.approx(
                result["img_per_s"] / result["peer"]["img_per_s"])
    json.dumps(outcome)  # serializable


def test_cli_quick_writes_json_and_markdown(tmp_path):
    backend = keras.backend.backend()
    out = tmp_path / "bench"
    config = ",".join(str(TINY[k]) for k in ("patch_size", "num_blocks", "hidden_dim",
                                            "tokens_mlp_dim", "channels_mlp_dim"))
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"), "--quick",
         "--config", config, "--image-size", "32", "--backends", backend,
         "--modes", "inference", "--warmup", "0", "--repeats", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"[{backend}] inference float32 batch 2" in proc.stdout  # progress output
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["spec"]["config"] == TINY
    (result,) = report["results"]
    assert result["backend"] == backend and result["img_per_s"] > 0
    table = (tmp_path / "bench.md").read_text()
    assert "| backend | device | mode |" in table
    assert f"| {backend} |" in table


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.parse_args(["--help"])
    assert exit_info.value.code == 0 and "--quick" in capsys.readouterr().out


def test_exports_hook_measures_saved_model_and_tflite():
    """`--exports`: SavedModel img/s and TFLite latency per mode, through keras_mixer.export."""
    from keras_mixer import export

    rows = export.benchmark(TINY_CONFIG, image_size=32, batch_size=2, log=lambda msg: None,
                            modes=("float32",))
    assert [row["artifact"] for row in rows] == ["saved_model", "tflite_float32"]
    assert rows[0]["images_per_second"] > 0
    assert rows[1]["latency_ms"] > 0 and rows[1]["max_abs_error"] < 1e-4
    report = dict(spec=benchmark.BenchmarkSpec(TINY_CONFIG, name="tiny", image_size=32).to_json(),
                  host=benchmark.host_info(), backends={"jax": {"exports": rows}}, results=[])
    table = benchmark.markdown(report)
    assert "| jax | saved_model |" in table and "| jax | tflite_float32 |" in table
