"""The benchmark suites: specs, FLOP counts, reports, and tiny real runs end to end (no timing asserts)."""

import json
import os

import numpy as np
import pytest
from helpers.processes import run_script
from helpers.tiny import TINY

import keras
from keras_mixer import MlpMixer, benchmark
from keras_mixer.backend import BackendCallError
from keras_mixer.benchmark import exports, gemm, report, throughput, training
from keras_mixer.cli import command_parser, parse_args
from keras_mixer.cli import benchmark as benchmark_cli
from keras_mixer.config import MixerConfig

# Tests that behave the same under every Keras backend: scripts/test.sh runs them once.
BACKEND_INDEPENDENT = True

TINY_CONFIG = MixerConfig(**TINY)
TINY_ARGS = ",".join(str(TINY[k]) for k in ("patch_size", "num_blocks", "hidden_dim",
                                            "tokens_mlp_dim", "channels_mlp_dim"))
TINY_TRAINING = ["--image-size", "16", "--patch-size", "8", "--hidden-dim", "16",
                 "--num-blocks", "1", "--batch-size", "4", "--steps", "1"]


@pytest.fixture(autouse=True)
def small_reference_gemms(monkeypatch):
    """Tiny runs: a small square reference GEMM (2048 is for real models), short timed blocks."""
    monkeypatch.setattr(gemm, "SQUARE_GEMM", 64)
    monkeypatch.setattr(throughput, "MATMUL_SECONDS", 0.02)


def tiny_spec(**kwargs):
    return benchmark.BenchmarkSpec(TINY_CONFIG, **dict(dict(name="tiny", image_size=32), **kwargs))


# --------------------------------------------------------------------------- FLOPs and specs


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
     (dict(modes=("serving",)), "mode"), (dict(repeats=0), "repeats"),
     (dict(image_size=36), "divisible"), (dict(optimizer="sgd"), "optimizer"),
     (dict(max_isa="sse2"), "max_isa")],
)
def test_spec_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_spec(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(image_size=30), "divisible"), (dict(variant="B/16", image_size=40), "divisible"),
     (dict(variant="Q/7"), "variant"), (dict(steps=0), "steps"), (dict(cifar_steps=-1), "cifar")],
)
def test_training_spec_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        benchmark.TrainingSpec(**kwargs)


@pytest.mark.parametrize("spec", [tiny_spec(dtypes=("bfloat16",)), benchmark.TrainingSpec()])
def test_spec_json_round_trip(spec):
    assert type(spec).from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_training_spec_builds_the_paper_proportions():
    config = benchmark.TrainingSpec(hidden_dim=16).train_config()
    assert (config.hidden_dim, config.tokens_mlp_dim, config.channels_mlp_dim) == (16, 8, 64)
    assert not config.export


# --------------------------------------------------------------------------- measurements


def test_matmul_reference_runs_in_the_rows_dtype():
    """A bfloat16 row is divided by a bfloat16 matmul rate, not a float32 one."""
    for dtype in ("float32", "bfloat16"):
        product = gemm.matmul_step((6, 5, 4), dtype)()
        assert keras.backend.standardize_dtype(product.dtype) == dtype
        assert tuple(product.shape) == (6, 4)


def test_reference_gemms_are_the_models_own_shapes_and_a_square():
    gemms = gemm.reference_gemms(TINY_CONFIG, 32, 3)
    tokens = (32 // TINY["patch_size"]) ** 2
    assert gemms == dict(
        channel_mlp=(3 * tokens, TINY["hidden_dim"], TINY["channels_mlp_dim"]),
        token_mlp=(3 * TINY["hidden_dim"], tokens, TINY["tokens_mlp_dim"]),
        square=(64, 64, 64))
    assert gemm.gemm_flops((2, 3, 5)) == 60


def test_limit_is_the_best_gemm_across_backends_per_dtype():
    def row(backend, dtype, gemm, model=10.0):
        return dict(backend=backend, dtype=dtype, matmul_gflops=gemm, matmul_shape="square",
                    model_gflops=model)

    rows = [row("jax", "float32", 100.0), row("torch", "float32", 200.0),
            row("jax", "bfloat16", 50.0), row("torch", "bfloat16", 800.0, model=400.0),
            dict(backend="tensorflow", dtype="bfloat16", error="no kernel")]
    limits = benchmark.apply_limits(rows)
    assert limits == {"float32": dict(gflops=200.0, backend="torch", shape="square"),
                      "bfloat16": dict(gflops=800.0, backend="torch", shape="square")}
    assert [r.get("limit_gflops") for r in rows] == [200.0, 200.0, 800.0, 800.0, None]
    assert rows[2]["fraction_of_limit"] == pytest.approx(10 / 800)
    assert rows[3]["fraction_of_limit"] == pytest.approx(0.5)


def test_training_rows_use_the_recipes_optimizer_or_keras_adamw():
    from keras_mixer import training

    recipe = throughput.make_optimizer("recipe")
    assert isinstance(recipe, training.AdamW)
    assert (recipe.global_clipnorm, recipe.weight_decay) == (1.0, training.TrainConfig().weight_decay)
    plain = throughput.make_optimizer("keras")  # Keras' own (a torch subclass on torch)
    assert isinstance(plain, keras.optimizers.AdamW) and not isinstance(plain, training.AdamW)


@pytest.mark.every_backend  # each backend's own timing and GEMM code
def test_run_backend_in_process_reports_every_case():
    spec = tiny_spec(batch_sizes=(2,), dtypes=("float32", "bfloat16"), repeats=1, warmup=1,
                     peers=True)
    outcome = benchmark.run_backend(spec, log=lambda msg: None)
    assert outcome["backend"] == keras.backend.backend()
    assert [(r["dtype"], r["mode"], r["batch"]) for r in outcome["results"]] == [
        ("float32", "inference", 2), ("float32", "training", 2),
        ("bfloat16", "inference", 2), ("bfloat16", "training", 2)]
    for result in outcome["results"]:
        assert "error" not in result, result
        assert result["img_per_s"] > 0 and result["matmul_gflops"] > 0
        assert result["matmul_dtype"] == result["dtype"]
        shapes = result["matmul_shapes"]
        assert set(shapes) == {"channel_mlp", "token_mlp", "square"}
        assert result["matmul_gflops"] == max(s["gflops"] for s in shapes.values())
        assert result["matmul_gflops"] == shapes[result["matmul_shape"]]["gflops"]
        assert result["peak_mib"] > 0
        assert result["fraction_of_matmul"] == pytest.approx(
            result["model_gflops"] / result["matmul_gflops"])
        assert result.get("optimizer") == ("recipe" if result["mode"] == "training" else None)
        if "peer" in result:
            assert result["peer"]["ratio"] == pytest.approx(
                result["img_per_s"] / result["peer"]["img_per_s"])
    assert "exports" not in outcome
    json.dumps(outcome)  # serializable
    assert outcome["precision"]["dtype"] == "bfloat16"  # bf16 rows come with their drift
    assert outcome["precision"]["relative_error"] < 0.05


def test_exports_measure_saved_model_served_model_and_tflite():
    """`--exports`: SavedModel img/s, the served SavedModel over gRPC vs direct, TFLite latency."""
    rows = exports.export_benchmark(TINY_CONFIG, image_size=32, batch_size=2,
                                    log=lambda msg: None, modes=("float32",),
                                    served_batches=(1, 2), served_clients=(1, 2))
    assert [row["artifact"] for row in rows] == ["saved_model"] + ["served"] * 8 + [
        "tflite_float32"]
    assert rows[0]["images_per_second"] > 0
    served = rows[1:-1]
    assert [(r["path"], r["batch"], r["clients"]) for r in served] == [
        (path, batch, clients) for batch in (1, 2) for path in ("direct", "grpc")
        for clients in (1, 2)]
    for row in served:
        assert row["images_per_second"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
        assert row["requests"] == row["clients"] * max(2, 16 // row["batch"])
        best_direct = max(r["images_per_second"] for r in served
                          if r["path"] == "direct" and r["batch"] == row["batch"])
        if row["path"] == "grpc":
            assert row["of_direct"] == pytest.approx(row["images_per_second"] / best_direct)
        else:
            assert "of_direct" not in row
    assert rows[-1]["latency_ms"] > 0 and rows[-1]["max_abs_error"] < 1e-4
    table = benchmark.markdown(dict(spec=tiny_spec().to_json(), host=benchmark.host_info(),
                                    backends={"jax": {"exports": rows}}, results=[]))
    assert "| jax | saved_model |" in table and "| jax | tflite_float32 |" in table
    assert "| jax | grpc | 2 | 2 |" in table and "| of direct |" in table


def test_run_backend_with_exports_adds_them(monkeypatch):
    calls = []

    def fake_export_benchmark(config, image_size, batch_size, log):
        calls.append((config, image_size, batch_size))
        return [dict(artifact="saved_model", batch=batch_size, images_per_second=1.0)]

    monkeypatch.setattr(exports, "export_benchmark", fake_export_benchmark)
    spec = tiny_spec(batch_sizes=(3,), modes=("inference",), repeats=1, warmup=0, peers=False,
                     exports=True)
    outcome = benchmark.run_backend(spec, log=lambda msg: None)
    assert calls == [(TINY_CONFIG, 32, 3)]
    assert outcome["exports"][0]["artifact"] == "saved_model"


# --------------------------------------------------------------------------- driver and reports


def test_run_rejects_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        benchmark.run(tiny_spec(), backends=("mxnet",))


def test_run_reports_a_failed_backend_and_goes_on(monkeypatch, tmp_path):
    calls = []

    def fake_run_under(backend, function, spec_json, **kwargs):
        calls.append((backend, function))
        if backend == "jax":
            raise BackendCallError("boom", 1)
        return dict(backend=backend, device="cpu", notes=["a note"],
                    results=[dict(backend=backend, device="cpu", mode="inference",
                                  dtype="float32", batch=2, error="ValueError: no kernel")])

    monkeypatch.setattr(benchmark, "_run_under", fake_run_under)
    result = benchmark.run(tiny_spec(), backends=("jax", "torch"), log=lambda msg: None,
                           json_path=tmp_path / "r.json", markdown_path=tmp_path / "r.md")
    assert calls == [("jax", benchmark.WORKERS["throughput"]),
                     ("torch", benchmark.WORKERS["throughput"])]
    assert result["backends"]["jax"] == {"error": "boom"}
    assert not benchmark.succeeded(result)
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(result))
    table = (tmp_path / "r.md").read_text()
    assert "| torch | cpu | inference | float32 | 2 | error: ValueError: no kernel |" in table
    assert "- jax: boom" in table and "- torch: a note" in table
    assert sorted(os.listdir(tmp_path)) == ["r.json", "r.md"]  # atomic: no temporary files left


def test_max_isa_caps_every_backend_and_says_so(monkeypatch, tmp_path):
    envs = []

    def fake_run_under(backend, function, spec_json, env=None, **kwargs):
        envs.append(env)
        return dict(backend=backend, device="cpu", results=[dict(
            backend=backend, device="cpu", mode="inference", dtype="float32", batch=2,
            error="not measured here")])

    monkeypatch.setattr(benchmark, "_run_under", fake_run_under)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    result = benchmark.run(tiny_spec(max_isa="avx2"), backends=("jax", "torch"),
                           log=lambda msg: None, markdown_path=tmp_path / "r.md")
    assert envs[0] == envs[1] == dict(
        ONEDNN_MAX_CPU_ISA="AVX2", MKL_ENABLE_INSTRUCTIONS="AVX2", ATEN_CPU_CAPABILITY="avx2",
        XLA_FLAGS="--xla_force_host_platform_device_count=2 --xla_cpu_max_isa=AVX2")
    assert [row["max_isa"] for row in result["results"]] == ["avx2", "avx2"]
    assert "kernels capped at AVX2 by --max-isa" in (tmp_path / "r.md").read_text()
    assert result["notes"] == [benchmark.JAX_MAX_ISA_NOTE]
    benchmark.run(tiny_spec(), backends=("jax",), log=lambda msg: None)
    assert envs[-1] == {}  # no cap unless asked


def test_max_isa_reaches_the_kernel_library():
    from keras_mixer.backend import run_under

    capability = run_under("torch", "torch.backends.cpu:get_cpu_capability",
                           env=report.max_isa_environment("avx2"))
    assert capability == "AVX2"


def test_host_info_reads_cpu_model_and_features(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\n"
                       "flags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16\n\n"
                       "processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu\n")
    host = report.host_info(str(cpuinfo))
    assert host["cpu"] == "Test CPU 9000"
    assert host["cpu_features"] == {"AVX2": True, "AVX-512": True, "AVX512_BF16": True,
                                    "AMX_BF16": False, "AMX_INT8": False}
    assert report.present_features(host) == ["AVX2", "AVX-512", "AVX512_BF16"]
    assert report.describe_host(host) == (f"Test CPU 9000 ({os.cpu_count()} cores; "
                                          "AVX2, AVX-512, AVX512_BF16; no AMX_BF16, no AMX_INT8)")
    assert report.host_info(str(tmp_path / "missing"))["cpu_features"] is None


def test_training_markdown():
    results = [dict(backend="jax", device="cpu", params=100, train_img_per_s=200.0,
                    cifar_steps=3, cifar_top1=0.25, cifar_seconds=9.0),
               dict(backend="torch", device="cpu", params=100, train_img_per_s=100.0)]
    table = benchmark.markdown(dict(
        suite="training", spec=benchmark.TrainingSpec().to_json(), host=benchmark.host_info(),
        backends={"tensorflow": {"error": "crashed"}}, results=results,
        pipelines={"eval resize": 1000.0, "train crop+flip": 500.0}, notes=["no CIFAR"]))
    assert "| jax | cpu | 100 | 200.0 | 1.00 | 0.2500 | 3 | 9.0 |" in table
    assert "| torch | cpu | 100 | 100.0 | 0.50 |  |  |  |" in table
    assert "| train crop+flip | 500.0 | 0.50 |" in table
    assert "- no CIFAR" in table and "- tensorflow: crashed" in table


def test_find_cifar(tmp_path):
    folder, why_not = training.find_cifar(benchmark.TrainingSpec(cifar_data=str(tmp_path)))
    assert (folder, why_not) == (str(tmp_path), None)
    spec = benchmark.TrainingSpec(cifar_steps=5, cifar_data=str(tmp_path / "absent.tar.gz"),
                                  cifar_dir=str(tmp_path / "extracted"))
    folder, why_not = training.find_cifar(spec)
    assert folder is None
    assert str(tmp_path / "absent.tar.gz") in why_not and "--cifar-data" in why_not
    assert "NOT measured" in why_not


# --------------------------------------------------------------------------- command line


def test_cli_parses_both_suites():
    parser = command_parser("benchmark")
    spec = benchmark_cli.spec_from_args(parser.parse_args(["--quick", "--config", TINY_ARGS,
                                                           "--image-size", "32"]))
    assert isinstance(spec, benchmark.BenchmarkSpec)
    assert (spec.config, spec.batch_sizes, spec.repeats, spec.peers) == (TINY_CONFIG, (2,), 2,
                                                                         False)
    assert spec.optimizer == "recipe"
    assert benchmark_cli.spec_from_args(parser.parse_args(["--optimizer", "keras"])).optimizer == "keras"
    args = parser.parse_args(["--verbose", "training", "--backends", "jax", "--cifar-steps", "7",
                              "--backend", "torch"])
    assert (args.suite, args.backends, args.verbose, args.backend) == (
        "training", ["jax"], True, "torch")
    spec = benchmark_cli.spec_from_args(args)
    assert spec == benchmark.TrainingSpec(cifar_steps=7)
    args = parse_args(["benchmark", "training", "--steps", "3"])  # keras-mixer ...
    assert (args.command, args.suite, args.steps) == ("benchmark", "training", 3)
    with pytest.raises(ValueError, match="five integers"):
        benchmark_cli.spec_from_args(parser.parse_args(["--config", "8,2"]))


@pytest.mark.parametrize("argv, expected", [([], "--quick"), (["training"], "--cifar-steps")])
def test_cli_help(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        command_parser("benchmark").parse_args([*argv, "--help"])
    assert exit_info.value.code == 0 and expected in capsys.readouterr().out


def test_cli_quick_writes_json_and_markdown(tmp_path):
    backend = keras.backend.backend()
    proc = run_script("benchmark.py", [
        "--quick", "--config", TINY_ARGS, "--image-size", "32", "--backends", backend,
        "--modes", "inference", "--warmup", "0", "--repeats", "1", "--out", tmp_path / "bench"],
        timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"[{backend}] inference float32 batch 2" in proc.stdout  # the worker's progress
    assert proc.stdout.index(f"=== {backend}") < proc.stdout.index(f"[{backend}]")
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["spec"]["config"] == TINY and result["host"]["cpu"]
    (row,) = result["results"]
    assert row["backend"] == backend and row["img_per_s"] > 0
    assert row["cpu"] == result["host"]["cpu"] and isinstance(row["cpu_features"], list)
    assert row["matmul_dtype"] == "float32" and row["limit_gflops"] == row["matmul_gflops"]
    assert result["limits"]["float32"]["backend"] == backend
    table = (tmp_path / "bench.md").read_text()
    assert "| backend | device | mode |" in table and f"| {backend} |" in table
    assert "float32 limit" in table and "| of limit |" in table
    assert table in proc.stdout  # printed too


def test_training_cli_says_when_cifar_is_missing(tmp_path):
    """Without the data it stops at once, saying where it looked (not after minutes of speed runs)."""
    backend = keras.backend.backend()
    absent = tmp_path / "no-cifar.tar.gz"
    proc = run_script("benchmark_training.py", [
        "--backends", backend, *TINY_TRAINING, "--pipeline-batches", "1", "--cifar-steps", "2",
        "--cifar-data", absent, "--cifar-dir", tmp_path / "cifar", "--out", tmp_path / "train"],
        timeout=400)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    first = proc.stderr.splitlines()[0]
    assert first.startswith(f"error: no CIFAR-10 data at {absent}") and "--cifar-steps 0" in first
    assert proc.stdout == "" and not (tmp_path / "train.json").exists()
    proc = run_script("benchmark_training.py", [  # speed only, as the message says
        "--backends", backend, *TINY_TRAINING, "--pipeline-batches", "1", "--cifar-steps", "0",
        "--out", tmp_path / "train"], timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((tmp_path / "train.json").read_text())
    (row,) = result["results"]
    assert row["backend"] == backend and row["train_img_per_s"] > 0 and "cifar_top1" not in row
    assert list(result["pipelines"])[0] == "eval resize"
    assert all(rate > 0 for rate in result["pipelines"].values())
    assert "| pipeline | img/s |" in (tmp_path / "train.md").read_text()


def test_compare_runs_both_checkouts_interleaved_and_reports_ratios(tmp_path, monkeypatch):
    # Every row is measured on both sides in alternating order, the baseline's worker importing
    # the baseline checkout (its PYTHONPATH); the ratio is current / baseline of the best rounds.
    from keras_mixer.benchmark import BenchmarkSpec, compare
    from keras_mixer.config import MixerConfig

    baseline = tmp_path / "baseline"
    (baseline / "keras_mixer").mkdir(parents=True)
    (baseline / "keras_mixer" / "__init__.py").write_text("")
    calls = []

    def fake_run_under(backend, function, spec_json, capture, env):
        side = "baseline" if env else "current"
        assert function == compare.WORKER and (env is None or env["PYTHONPATH"] == str(baseline))
        calls.append((backend, side))
        rate = {"baseline": 10.0, "current": 12.0}[side] + len(calls)  # later rounds are faster
        return dict(results=[dict(backend=backend, mode="inference", dtype="float32", batch=2,
                                  img_per_s=rate)])

    monkeypatch.setattr(compare, "run_under", fake_run_under)
    spec = BenchmarkSpec(config=MixerConfig(8, 1, 16, 8, 32), name="tiny", image_size=16,
                         batch_sizes=(2,), modes=("inference",), repeats=1, warmup=0, peers=True)
    report = compare.compare(spec, baseline, ["tensorflow", "jax"], rounds=2, log=lambda *_: None)
    assert calls == [("tensorflow", "baseline"), ("tensorflow", "current"), ("tensorflow", "current"),
                     ("tensorflow", "baseline"), ("jax", "baseline"), ("jax", "current"),
                     ("jax", "current"), ("jax", "baseline")]
    assert not spec.peers and not spec.exports
    row = report["rows"][0]
    assert (row["backend"], row["baseline"], row["current"]) == ("tensorflow", 14.0, 15.0)
    assert row["ratio"] == pytest.approx(15.0 / 14.0)
    compare.write(report, str(tmp_path / "ab"), log=lambda *_: None)
    assert "current / baseline" in (tmp_path / "ab.md").read_text()
    with pytest.raises(ValueError, match="not a keras-mixer checkout"):
        compare.compare(spec, tmp_path, ["tensorflow"])
