"""SavedModel and TFLite export: signatures, numerics vs Keras, atomic versions, any source backend."""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers.presets import tiny_params, write_timm_repository
from helpers.processes import run_cli_with_file_limit, run_worker, worker_env
from helpers.tiny import SHARED_DATA, tiny_classifier

import keras_mixer
from keras_mixer import deploy, files, images
from keras_mixer.deploy import saved_model, signatures

# Tests that behave the same under every Keras backend: scripts/test.sh runs them once.
BACKEND_INDEPENDENT = True

CIFAR_TAR = os.path.join(SHARED_DATA, "cifar10-jpg", "cifar10-jpg.tar.gz")


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.every_backend  # the exported_mixer fixture trains its model on this backend
def test_saved_model_layout_and_signatures(exported_mixer):
    version_dir = exported_mixer.version_dir
    assert os.path.basename(version_dir) == "1"
    assert sorted(os.listdir(os.path.dirname(version_dir))) == ["1"]  # no temp dir left
    with open(os.path.join(version_dir, "assets", "labels.txt")) as f:
        assert f.read().splitlines() == exported_mixer.labels
    with open(os.path.join(version_dir, saved_model.REPORT_FILE)) as f:
        report = json.load(f)
    assert report["max_abs_diff"] <= 1e-4
    assert report["signatures"] == ["serving_bytes", "serving_default"]

    loaded = tf.saved_model.load(version_dir, tags=["serve"])
    assert set(loaded.signatures) == {"serving_default", "serving_bytes"}
    images = exported_mixer.images
    out = loaded.signatures["serving_default"](images=tf.constant(images, tf.float32))
    np.testing.assert_allclose(out["probabilities"].numpy(), exported_mixer.expected, atol=1e-5)
    order = np.argsort(-exported_mixer.expected, axis=-1)[:, :5]
    np.testing.assert_array_equal(out["top_k_classes"].numpy(), order)
    np.testing.assert_allclose(out["top_k_scores"].numpy(),
                               np.take_along_axis(exported_mixer.expected, order, -1), atol=1e-5)
    labels = np.array(exported_mixer.labels)[order]
    np.testing.assert_array_equal(out["top_k_labels"].numpy().astype(str), labels)

    # Encoded images: PNG is lossless, so the bytes signature computes the same numbers.
    png = tf.stack([tf.io.encode_png(image) for image in images[:4]])
    out = loaded.signatures["serving_bytes"](image_bytes=png)
    np.testing.assert_allclose(out["probabilities"].numpy(), exported_mixer.expected[:4], atol=1e-5)

    # Other sizes are resized in the graph to 32x32.
    big = np.repeat(np.repeat(images[:2], 3, axis=1), 2, axis=2).astype("float32")  # 96x64
    out = loaded.signatures["serving_default"](images=tf.constant(big))
    resized = tf.image.resize(big, (32, 32), antialias=True).numpy()
    model = keras.saving.load_model(exported_mixer.keras_path)
    np.testing.assert_allclose(out["probabilities"].numpy(), model.predict(resized, verbose=0), atol=1e-5)

    with pytest.raises(tf.errors.InvalidArgumentError, match="empty batch"):
        loaded.signatures["serving_default"](images=tf.zeros((0, 32, 32, 3)))


def test_preset_model_is_served_as_it_was_evaluated_upstream(tmp_path):
    """A model loaded from a timm repository (crop 0.875, bicubic, exact GELU) is exported with
    that policy in both signatures, and the report records it."""
    folder = write_timm_repository(tmp_path / "repo", tiny_params())
    model = keras_mixer.load_model(folder)
    model.save(str(tmp_path / "timm.keras"))  # the config travels: crop, filter, scaling, GELU
    version_dir = deploy.export_saved_model(str(tmp_path / "timm.keras"), str(tmp_path / "models"),
                                            name="timm")
    with open(os.path.join(version_dir, saved_model.REPORT_FILE)) as f:
        report = json.load(f)
    assert (report["crop_fraction"], report["interpolation"]) == (0.875, "bicubic")
    loaded = tf.saved_model.load(version_dir, tags=["serve"])
    photos = np.random.default_rng(3).integers(0, 256, (2, 40, 48, 3)).astype("uint8")
    prepared = images.resize(photos, (32, 32), 0.875, "bicubic").numpy()
    expected = model.predict(prepared, verbose=0)
    out = loaded.signatures["serving_default"](images=tf.constant(photos, tf.float32))
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)
    png = tf.stack([tf.io.encode_png(photo) for photo in photos])
    out = loaded.signatures["serving_bytes"](image_bytes=png)
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)
    bilinear = model.predict(images.resize(photos, (32, 32), 0.875).numpy(), verbose=0)
    assert np.abs(bilinear - expected).max() > 1e-4  # the filter matters: this checks something


@pytest.mark.parametrize("source_backend", ["jax", "torch"])
def test_export_of_model_trained_on_other_backends(source_backend, tmp_path):
    """A .keras trained under jax / torch exports, and TF Serving's graph reproduces it."""
    backend = keras.backend.backend()
    if source_backend == backend:
        pytest.skip("the exported_mixer fixture covers a model trained on this backend")
    plain = source_backend == "torch"  # also covers models without preprocessing, with logits
    images, expected = run_worker(source_backend, "workers.export_worker:train_and_save",
                                  str(tmp_path), plain)
    version_dir = deploy.export_saved_model(str(tmp_path / "model.keras"), str(tmp_path / "models"),
                                            name="trained", version=7)
    assert version_dir == str(tmp_path / "models" / "trained" / "7")
    if plain:
        expected = softmax(expected)
    loaded = tf.saved_model.load(version_dir, tags=["serve"])
    out = loaded.signatures["serving_default"](images=tf.constant(images.astype("float32")))
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)
    assert "top_k_labels" not in out
    assert out["top_k_classes"].shape == (16, 5)


def test_sigkill_during_export_leaves_no_version(exported_mixer, tmp_path):
    base = tmp_path / "models" / "mixer"
    shutil.copytree(exported_mixer.version_dir, base / "1")
    # The library call the export command makes (the command itself is being rewritten).
    export = "import sys; from keras_mixer import deploy; deploy.export_saved_model(*sys.argv[1:])"
    proc = subprocess.Popen(
        [sys.executable, "-c", export, exported_mixer.keras_path, str(tmp_path / "models")],
        env=worker_env("tensorflow"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not any(name.startswith(".tmp-") for name in os.listdir(base)):
            assert proc.poll() is None, "export finished before it could be killed"
            assert time.monotonic() < deadline, "export never started writing"
            time.sleep(0.005)
        time.sleep(0.3)  # let it write part of the SavedModel
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert [name for name in os.listdir(base) if not name.startswith(".")] == ["1"]
    assert deploy.next_version(str(base)) == 2
    # What the killed export left is recognised as stale (its writer is gone) and removed.
    left = [name for name in os.listdir(base) if name.startswith(".tmp-")]
    assert left and files.remove_stale_temps(str(base)) == [str(base / name) for name in left]
    assert os.listdir(base) == ["1"]
    with pytest.raises(FileExistsError, match="already exists"):
        deploy.export_saved_model(exported_mixer.keras_path, str(tmp_path / "models"), version=1)


def dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="exports in this process under TensorFlow (other backends use a subprocess)")
def test_export_racing_another_takes_the_next_version(tmp_path, monkeypatch):
    """Two exports at once: the one that renames second takes the next number, no ENOTEMPTY."""
    base = tmp_path / "models" / "mixer"
    orphan = base / (files.temp_prefix().replace(f"p{os.getpid()}h", f"p{dead_pid()}h") + "x")
    (orphan / "variables").mkdir(parents=True)  # a version a killed export left half written
    real_check = saved_model.check_saved_model

    def check_while_another_export_publishes(*args, **kwargs):
        report = real_check(*args, **kwargs)
        (base / "1").mkdir()  # the other export, started at the same time, finished first
        (base / "1" / "saved_model.pb").write_bytes(b"theirs")
        return report

    monkeypatch.setattr(saved_model, "check_saved_model", check_while_another_export_publishes)
    report = saved_model.write_saved_model(tiny_classifier(), str(tmp_path / "models"), "mixer")
    assert report["path"] == str(base / "2") and report["version"] == 2
    assert sorted(os.listdir(base)) == ["1", "2"]  # the orphan is gone, theirs untouched
    assert (base / "1" / "saved_model.pb").read_bytes() == b"theirs"
    with open(base / "2" / saved_model.REPORT_FILE) as f:
        assert json.load(f)["version"] == 2


def test_publishing_a_version_that_another_export_took(tmp_path):
    base = tmp_path / "mixer"
    (base / "3").mkdir(parents=True)
    (base / "3" / "saved_model.pb").write_bytes(b"theirs")
    for explicit in (True, False):
        tmp = base / f".tmp-mine-{explicit}"
        tmp.mkdir()
        (tmp / "saved_model.pb").write_bytes(b"mine")
        if explicit:
            with pytest.raises(FileExistsError, match=r"Version directory .*mixer/3 was published by "
                                                      "another export while this one ran"):
                saved_model.publish_version(str(tmp), str(base), 3, {}, explicit=True)
            assert (base / "3" / "saved_model.pb").read_bytes() == b"theirs"
        else:
            final = saved_model.publish_version(str(tmp), str(base), 3, {})
            assert final == str(base / "4") and (base / "4" / "saved_model.pb").read_bytes() == b"mine"
            with open(base / "4" / saved_model.REPORT_FILE) as f:
                assert json.load(f) == {"version": 4}


def test_keras_probabilities_refuses_what_the_signatures_refuse():
    """Our entry points around model.predict: a clear ValueError, not Keras' UnboundLocalError."""
    model = tiny_classifier()
    with pytest.raises(ValueError, match="Empty batch: give at least one image"):
        signatures.keras_probabilities(model, np.zeros((0, 32, 32, 3), "float32"))
    images = np.full((2, 32, 32, 3), 128.0, "float32")
    images[1, 3, 4, 0] = np.nan
    with pytest.raises(ValueError, match="Images contain NaN or Inf"):
        signatures.keras_probabilities(model, images)
    # What the README says model.predict itself does with NaN pixels: NaN probabilities.
    assert np.isnan(model.predict(images, verbose=0)[1]).all()
    assert np.isfinite(signatures.keras_probabilities(model, images[:1])).all()


TF_ONLY = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="TFLite conversion runs under TensorFlow (run_under from other backends): tested once per CI")
INTEGER_OPS = ("FULLY_CONNECTED", "BATCH_MATMUL", "CONV_2D")  # the ops that carry the weights


@TF_ONLY
def test_tflite_modes_match_keras(exported_mixer, tmp_path):
    from keras_mixer.deploy import layer_report, litert, tflite

    images = exported_mixer.images.astype("float32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = deploy.export_tflite(exported_mixer.keras_path, str(tmp_path), name="tiny",
                                    representative_images=images[:16], eval_images=images,
                                    labels=exported_mixer.labels, threads=(1,))
    assert not [w for w in caught if "tf.lite.Interpreter is deprecated" in str(w.message)]
    by_mode = {row["mode"]: row for row in rows}
    assert list(by_mode) == list(deploy.TFLITE_MODES)
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["tiny.labels.txt"] + [f"tiny.{m}.tflite{info}" for m in deploy.TFLITE_MODES for info in ("", ".json")]
        + [f"tiny.{m}.tflite{info}" for m in tflite.QUANTIZED_MODES for info in (".layers.json", ".layers.png")])
    assert (tmp_path / "tiny.labels.txt").read_text().splitlines() == exported_mixer.labels
    for row in rows:
        assert os.path.getsize(row["path"]) == row["size_bytes"]
        # Mobile-ready: one fixed-size signature, serving_default(images) -> probabilities.
        uint8 = row["mode"] == "int8"
        assert litert.signature(row["path"]) == {
            "inputs": {"images": ((1, 32, 32, 3), "uint8" if uint8 else "float32")},
            "outputs": {"probabilities": ((1, 10), "float32")}}
        got, _ = litert.run_tflite(row["path"], images[:4])
        assert got.shape == (4, 10) and np.allclose(got.sum(-1), 1.0, atol=0.02)
    assert by_mode["float32"]["max_abs_error"] < 1e-4
    assert by_mode["float32"]["top1_agreement"] == 1.0
    assert by_mode["float16"]["max_abs_error"] < 1e-2
    assert by_mode["int8"]["size_bytes"] < by_mode["float32"]["size_bytes"]

    # The integer modes really are integer where the weights are.
    def op_dtypes(mode):
        return [(op, dtype) for op, _, dtype in litert.op_types(by_mode[mode]["path"])]

    for mode, want in (("int8", {"int8"}), ("int16x8", {"int16"})):
        ops = op_dtypes(mode)
        assert {dtype for op, dtype in ops if op in INTEGER_OPS} == want, mode
        assert {dtype for op, dtype in ops if op != "DEQUANTIZE"} <= {"int8", "int16", "int32", "uint8"}, mode
    # mixed: the layers it reports float are float in the file, and it reports its selection.
    with open(by_mode["mixed"]["report"]) as f:
        mixed_report = json.load(f)
    floated = set(by_mode["mixed"]["float_layers"])
    assert floated <= {layer["layer"] for layer in mixed_report["layers"]}
    assert mixed_report["float_layers"] == by_mode["mixed"]["float_layers"]
    assert len(floated) <= tflite.MIXED_MAX_FLOAT_LAYERS
    for op, name, dtype in litert.op_types(by_mode["mixed"]["path"]):
        if layer_report.layer_name(name, op) in floated:
            assert dtype == "float32", (op, name)
    selection = mixed_report["selection"]
    assert selection["images"] == 8 and selection["target"] == tflite.MIXED_TARGET  # half of 16
    assert selection["margin"] == tflite.MIXED_MARGIN
    # Each layer's harm is measured alone; the walk starts all float and tries each layer in int8
    # once (layers with multiply-accumulates first), keeping it if the agreement holds.
    names = [layer["layer"] for layer in mixed_report["layers"]]
    assert all({"macs", "alone_int8_agreement", "alone_int8_mean_abs_error", "snr_db"} <= set(layer)
               for layer in mixed_report["layers"])
    steps = selection["steps"]
    assert sorted(steps[0]["float_layers"]) == sorted(names) and len(steps) == len(names) + 1
    kept = set(names)
    for step in steps[1:]:
        assert len(kept - set(step["float_layers"])) == 1 and set(step["float_layers"]) <= kept
        if step["agreement"] >= selection["target"] + selection["margin"]:
            kept = set(step["float_layers"])
    assert kept == floated and selection["agreement"] >= selection["target"] + selection["margin"]
    # Integer coverage, in every row and in the reports.
    assert by_mode["float32"]["integer_ops"] == 0 and by_mode["float32"]["ops"] > 10
    assert by_mode["int8"]["integer_ops"] == by_mode["int8"]["ops"] == by_mode["float32"]["ops"]
    assert by_mode["int8"]["integer_macs"] == by_mode["int8"]["macs"] == by_mode["float32"]["macs"] > 0
    assert by_mode["dynamic_int8"]["integer_macs"] == 0  # float activations
    assert 0 <= by_mode["mixed"]["integer_macs"] <= by_mode["mixed"]["macs"]
    assert mixed_report["coverage"] == {key: by_mode["mixed"][key]
                                        for key in ("integer_ops", "ops", "integer_macs", "macs")}
    # Token mixing is a FULLY_CONNECTED (per-channel weights, XNNPACK int8), not a BATCH_MATMUL.
    assert "BATCH_MATMUL" not in {op for op, _ in op_dtypes("int8")}

    # The per-layer report lists every quantized layer, with an error for each.
    for mode in tflite.QUANTIZED_MODES:
        with open(by_mode[mode]["report"]) as f:
            report = json.load(f)
        assert report["mode"] == mode
        assert report["quantized_layers"] == layer_report.quantized_ops(by_mode[mode]["path"])
        assert report["quantized_layers"] or mode == "dynamic_int8"
        measured = {layer["tensor"] for layer in report["accumulated"]}
        assert {layer["tensor"] for layer in report["quantized_layers"]} <= measured
        assert all(layer["rmse"] >= 0 for layer in report["accumulated"])
        if mode in ("int8", "mixed"):
            assert report["debugger"] and {"rmse", "rmse_over_scale", "snr_db"} <= set(report["debugger"][0])
        with open(by_mode[mode]["path"] + layer_report.CHART_SUFFIX, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    table = tflite.markdown_table(rows)
    assert table.count("\n| ") == len(rows) and "| int16x8 |" in table
    assert f"| {by_mode['int8']['ops']} of {by_mode['int8']['ops']} (100.0%) |" in table


@TF_ONLY
def test_tflite_is_published_after_its_report(exported_mixer, tmp_path, monkeypatch):
    from keras_mixer.deploy import layer_report

    def broken_chart(report, path):
        raise RuntimeError("chart failed")

    monkeypatch.setattr(layer_report, "plot", broken_chart)
    with pytest.raises(RuntimeError, match="chart failed"):
        deploy.export_tflite(exported_mixer.keras_path, str(tmp_path), name="tiny",
                             modes=["dynamic_int8"], threads=(1,))
    assert not list(tmp_path.glob("*.tflite"))  # no model without its report


def test_tflite_mixed_settings_are_checked(tmp_path):
    for settings, flag in ((dict(mixed_target=1.5), "--mixed-target"),
                           (dict(mixed_margin=-0.1), "--mixed-margin")):
        with pytest.raises(ValueError, match=flag):
            deploy.export_tflite(str(tmp_path / "m.keras"), str(tmp_path), modes=["mixed"],
                                 representative_images=np.zeros((4, 32, 32, 3)), **settings)


def test_layer_names_group_the_converters_tensors():
    from keras_mixer.deploy.layer_report import layer_name, rank_layers

    assert layer_name("mixer_1/mixer_block_0_1/norm_1_1/Rsqrt") == "mixer_block_0/norm_1"
    assert layer_name("mixer_1/mixer_block_1_1/norm_1_1/mul_2;mixer_1/mixer_block_1_1/norm_1_1/add_1;"
                      "mixer_1/mixer_block_1_1/channel_mixing_1/add1") == "mixer_block_1/channel_mixing"
    assert layer_name("mixer_1/mixer_block_0_1/add_1") == "mixer_block_0/add_1"  # a residual add
    assert layer_name("mixer_1/stem_1/proj_1/BiasAdd;mixer_1/stem_1/proj_1/convolution") == "stem"
    assert layer_name("StatefulPartitionedCall:01", "SOFTMAX") == "head"
    assert layer_name("tfl.quantize") is None
    ranked = rank_layers([dict(tensor="m/stem_1/a", op="CONV_2D", snr_db=40.0),
                          dict(tensor="m/head_1/b", op="FULLY_CONNECTED", snr_db=float("nan")),
                          dict(tensor="m/mixer_block_0_1/norm_0_1/c", op="MUL", snr_db=30.0),
                          dict(tensor="m/mixer_block_0_1/norm_0_1/d", op="MEAN", snr_db=12.0)])
    assert [(g["layer"], g["snr_db"], len(g["tensors"])) for g in ranked] == [
        ("mixer_block_0/norm_0", 12.0, 2), ("stem", 40.0, 1), ("head", float("inf"), 1)]


@TF_ONLY
def test_tflite_bad_calibration_data(exported_mixer, tmp_path):
    for modes in (["int8"], ["int16x8", "mixed"]):
        with pytest.raises(ValueError, match=r"need representative_images .*--representative-images"):
            deploy.export_tflite(exported_mixer.keras_path, str(tmp_path), modes=modes)
    with pytest.raises(FileNotFoundError, match="Image folder not found: .*nowhere"):
        deploy.export_tflite(exported_mixer.keras_path, str(tmp_path), modes=["int8"],
                             representative_images=str(tmp_path / "nowhere"))
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match="No image files .* under .*empty"):
        deploy.export_tflite(exported_mixer.keras_path, str(tmp_path), modes=["int8"],
                             representative_images=str(tmp_path / "empty"))
    (tmp_path / "empty" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="Unreadable image .*broken.jpg"):
        deploy.export_tflite(exported_mixer.keras_path, str(tmp_path), modes=["int8"],
                             representative_images=str(tmp_path / "empty"))
    assert not list(tmp_path.glob("*.tflite"))


@pytest.fixture(scope="session")
def cifar_mixer(tmp_path_factory):
    """A small Mixer (patch 4, 2 blocks, width 64) trained 5 epochs on 5,000 shared CIFAR-10
    training images (once per run); 500 test images held out."""
    if not os.path.exists(CIFAR_TAR):
        pytest.skip("needs ../shared/data/cifar10-jpg")
    import tarfile

    root = tmp_path_factory.mktemp("cifar")
    counts = {}
    with tarfile.open(CIFAR_TAR) as tar:
        for member in tar:
            split, class_name = (member.name.split("/") + ["", ""])[:2]  # train/<class>/NNNN.jpg
            if member.isfile() and split in ("train", "test"):
                taken = counts.setdefault((split, class_name), [])
                if len(taken) < (500 if split == "train" else 50):
                    taken.append(member.name)
                    tar.extract(member, root, filter="data")
    train = str(root / "train")
    from keras_mixer import data as datasets
    from keras_mixer import images as image_policy

    paths, labels, _ = datasets.scan_folder(train)
    keras.utils.set_random_seed(0)
    model = keras_mixer.MlpMixer(patch_size=4, num_blocks=2, hidden_dim=64, tokens_mlp_dim=32,
                                 channels_mlp_dim=256, input_shape=(32, 32, 3), num_classes=10)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy")
    pixels = image_policy.load_files(paths, (32, 32))
    model.fit(pixels, np.asarray(labels), batch_size=64, epochs=5, verbose=0, shuffle=True)
    keras_path = str(root / "cifar.keras")
    model.save(keras_path)
    return types.SimpleNamespace(keras_path=keras_path, train=train, test=str(root / "test"))


@TF_ONLY
def test_tflite_integer_modes_keep_a_trained_models_answers(cifar_mixer, tmp_path):
    rows = deploy.export_tflite(cifar_mixer.keras_path, str(tmp_path), name="cifar",
                                modes=["int16x8", "mixed"], representative_images=cifar_mixer.train,
                                eval_images=cifar_mixer.test, max_calibration_images=200, threads=(1,),
                                mixed_selection_images=300)
    by_mode = {row["mode"]: row for row in rows}
    print({mode: (row["top1_agreement"], row["top1_accuracy"], row.get("float_layers"))
           for mode, row in by_mode.items()})
    assert by_mode["int16x8"]["num_eval_images"] == 500 and by_mode["int16x8"]["top1_accuracy"] > 0.3
    assert by_mode["int16x8"]["top1_agreement"] >= 0.992  # measured 0.996-0.998 (1-2 of 500 differ)
    # mixed: the measured selection meets its target on held-out training images and keeps
    # the float model's answers on test images; a lower target keeps fewer layers float.
    mixed = by_mode["mixed"]
    assert mixed["mixed_selection"]["target_met"] and mixed["mixed_selection"]["images"] == 300
    assert mixed["top1_agreement"] >= 0.985  # measured 0.992 (11 of 16 layers float)
    loose = deploy.export_tflite(cifar_mixer.keras_path, str(tmp_path / "loose"), name="cifar",
                                 modes=["mixed"], representative_images=cifar_mixer.train,
                                 eval_images=cifar_mixer.test, max_calibration_images=200,
                                 threads=(1,), mixed_selection_images=300, mixed_target=0.95)[0]
    print(loose["top1_agreement"], loose["float_layers"], loose["integer_macs"] / loose["macs"])
    assert len(loose["float_layers"]) < len(mixed["float_layers"])  # measured 1 (96.2%, all MACs int8)
    assert loose["integer_macs"] > mixed["integer_macs"]


@pytest.mark.skipif(importlib.util.find_spec("tf2onnx") is None, reason="needs the onnx extra (tf2onnx)")
def test_onnx_export(exported_mixer, tmp_path):
    result = deploy.export_onnx(exported_mixer.keras_path, str(tmp_path), name="tiny")
    assert result["path"] == str(tmp_path / "tiny.onnx") and os.listdir(tmp_path) == ["tiny.onnx"]
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime not installed: exported but not run")
    import onnxruntime

    assert result["max_abs_diff"] <= 1e-4
    session = onnxruntime.InferenceSession(result["path"], providers=["CPUExecutionProvider"])
    images = exported_mixer.images.astype("float32")
    got = session.run(None, {session.get_inputs()[0].name: images})[0]
    np.testing.assert_allclose(got, exported_mixer.expected, atol=1e-5)


def _matmul_dtypes(concrete_function):
    """The dtypes of every matrix product in a signature's graph and the functions it calls."""
    graph = concrete_function.graph.as_graph_def()
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    return {tf.dtypes.as_dtype(n.attr["T"].type).name for n in nodes
            if n.op in ("MatMul", "BatchMatMulV2", "BatchMatMulV3", "_MklMatMul", "Conv2D")}


def test_bfloat16_saved_model_keeps_the_interface(exported_mixer, tmp_path, capfd):
    from keras_mixer import cli

    assert cli.main(["export", "saved-model", exported_mixer.keras_path, "--dtype", "bfloat16",
                     "--export-dir", str(tmp_path), "--name", "bf16"]) == 0
    assert "bfloat16 drift against float32" in capfd.readouterr().out  # (a subprocess off TF)
    version_dir = str(tmp_path / "bf16" / "1")
    with open(os.path.join(version_dir, saved_model.REPORT_FILE)) as f:
        report = json.load(f)
    assert report["dtype"] == "bfloat16" and report["max_abs_diff"] <= 1e-2  # vs Keras in bf16
    assert report["drift_vs_float32"]["relative_error"] < 0.05

    ours, reference = (tf.saved_model.load(d, tags=["serve"])
                       for d in (version_dir, exported_mixer.version_dir))
    assert set(ours.signatures) == set(reference.signatures)
    for name in ours.signatures:
        mine, theirs = ours.signatures[name], reference.signatures[name]
        assert mine.structured_input_signature == theirs.structured_input_signature
        assert mine.structured_outputs.keys() - {"top_k_labels"} == theirs.structured_outputs.keys() - {"top_k_labels"}
        for key, spec in mine.structured_outputs.items():
            assert spec.dtype == theirs.structured_outputs[key].dtype, key
    assert _matmul_dtypes(ours.signatures["serving_default"]) == {"bfloat16"}
    assert _matmul_dtypes(reference.signatures["serving_default"]) == {"float32"}

    images = tf.constant(exported_mixer.images, tf.float32)
    got = ours.signatures["serving_default"](images=images)["probabilities"]
    assert got.dtype == tf.float32
    drift = keras_mixer.models.drift(exported_mixer.expected, got.numpy())
    assert drift["relative_error"] < 0.05 and drift["top1_agreement"] >= 0.8, drift


def test_dtype_flag_is_for_the_saved_model(exported_mixer, tmp_path, capsys):
    from keras_mixer import cli

    assert cli.main(["export", "tflite", exported_mixer.keras_path, "--dtype", "bfloat16",
                     "--export-dir", str(tmp_path)]) == 2
    assert "--dtype bfloat16 applies to the SavedModel" in capsys.readouterr().err
    with pytest.raises(ValueError, match="Unknown SavedModel dtype"):
        deploy.export_saved_model(exported_mixer.keras_path, str(tmp_path), dtype="float16")


# ----------------------------------------------------------------------------- issue 27 §2-§4

BAD_NAMES = ["../../trav", "", "a/b", "ABSOLUTE", ".", "..", ".hidden", "a\\b", "x" * 200, "na me"]


def tree(root):
    return sorted(os.path.relpath(os.path.join(folder, name), root)
                  for folder, dirs, names in os.walk(root) for name in dirs + names)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_export_names_are_one_safe_component(exported_mixer, tmp_path, name, capsys):
    """Every exporter refuses a name that is not one safe path component, writing nothing."""
    inner = tmp_path / "w" / "inner"
    inner.mkdir(parents=True)
    if name == "ABSOLUTE":
        name = str(tmp_path / "absolute")  # an absolute path inside this test's folder
    for export in (lambda: deploy.export_saved_model(exported_mixer.keras_path, str(inner), name=name),
                   lambda: deploy.export_tflite(exported_mixer.keras_path, str(inner), name=name,
                                                modes=["float32"]),
                   lambda: deploy.export_onnx(exported_mixer.keras_path, str(inner), name=name)):
        with pytest.raises(ValueError, match="a model name is one path component"):
            export()
    from keras_mixer import cli

    assert cli.main(["export", "saved-model", exported_mixer.keras_path, "--export-dir", str(inner),
                     "--name", name]) == 2
    assert capsys.readouterr().err.startswith(f"error: Invalid --name {name!r}: a model name is")
    assert tree(tmp_path) == ["w", os.path.join("w", "inner")]


def test_export_removes_its_temporary_files_and_limits_image_size(exported_mixer, tmp_path,
                                                                   monkeypatch):
    """No keras_mixer_labels_* folder is left in the system's temporary folder, and the
    signatures refuse images over the pixel limit recorded at export, before decoding them."""
    import tempfile

    system_tmp = tmp_path / "system_tmp"
    system_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(system_tmp))  # also for the export's subprocess
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    version_dir = deploy.export_saved_model(exported_mixer.keras_path, str(tmp_path / "models"),
                                            labels=exported_mixer.labels, max_image_pixels=48 * 48)
    assert os.listdir(system_tmp) == []
    assert os.listdir(tmp_path / "models" / "mixer") == ["1"]
    with open(os.path.join(version_dir, saved_model.REPORT_FILE)) as f:
        assert json.load(f)["max_image_pixels"] == 48 * 48
    loaded = tf.saved_model.load(version_dir)
    small = tf.io.encode_png(tf.zeros((48, 40, 3), tf.uint8))
    out = loaded.signatures["serving_bytes"](image_bytes=tf.stack([small]))
    assert out["top_k_labels"].shape == (1, 5)
    large = tf.io.encode_jpeg(tf.zeros((49, 48, 3), tf.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="image of 49x48 pixels is larger than "
                                                             "the 2304 pixels this model takes"):
        loaded.signatures["serving_bytes"](image_bytes=tf.stack([small, large]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="image of 50x50 pixels is larger"):
        loaded.signatures["serving_default"](images=tf.zeros((1, 50, 50, 3)))
    with pytest.raises(ValueError, match="max_image_pixels must be an integer >= 1"):
        deploy.export_saved_model(exported_mixer.keras_path, str(tmp_path / "models"),
                                  max_image_pixels=0)


def test_default_export_refuses_a_10000_pixel_square_png(exported_mixer):
    """291 KB of PNG that decodes to 10000 x 10000 pixels (1.2 GB): refused from its header."""
    from helpers.tiny import png_bytes

    loaded = tf.saved_model.load(exported_mixer.version_dir)
    with pytest.raises(tf.errors.InvalidArgumentError, match="image of 10000x10000 pixels is larger"):
        loaded.signatures["serving_bytes"](image_bytes=tf.constant([png_bytes(10000, 10000)]))


def test_encoded_size_reads_every_format_header():
    import io

    from PIL import Image

    from keras_mixer import images

    for kind in ("PNG", "GIF", "BMP", "JPEG"):
        buffer = io.BytesIO()
        Image.new("RGB", (7, 5)).save(buffer, kind)
        assert images.encoded_size(tf.constant(buffer.getvalue())).numpy().tolist() == [5, 7], kind
    buffer = io.BytesIO()
    Image.new("RGB", (7, 5)).save(buffer, "BMP")
    top_down = bytearray(buffer.getvalue())
    top_down[22:26] = (-5).to_bytes(4, "little", signed=True)  # a top-down BMP: negative height
    assert images.encoded_size(tf.constant(bytes(top_down))).numpy().tolist() == [5, 7]
    assert images.encoded_size(tf.constant(b"not an image")).numpy().tolist() == [0, 0]


def nan_model(path):
    model = tiny_classifier()
    model.set_weights([np.full_like(w, np.nan) for w in model.get_weights()])
    model.save(path)
    return str(path)


def test_a_nan_model_is_one_error_line_and_never_published(tmp_path, capsys):
    from keras_mixer import cli

    path = nan_model(tmp_path / "nan.keras")
    export_dir = tmp_path / "models"
    for artifact in ("saved-model", "tflite"):
        assert cli.main(["export", artifact, path, "--export-dir", str(export_dir),
                         "--modes", "float32"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: Model 'mlp_mixer' outputs NaN or Inf"), err
        assert "Traceback" not in err and len(err.splitlines()) == 2
    assert [name for name in tree(export_dir) if not name.startswith(".")] in ([], ["mixer"])


def test_disk_full_during_export_is_one_error_line(exported_mixer, tmp_path):
    """The file size limit (ulimit -f) reached while writing: one error line, nothing published."""
    export_dir = tmp_path / "models"
    result = run_cli_with_file_limit(["export", "saved-model", exported_mixer.keras_path,
                                      "--export-dir", export_dir], 64_000, keras.backend.backend())
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: No room to write ")
    assert "ulimit -f" in errors[0] and "Traceback" not in result.stderr, result.stderr
    assert not [name for name in tree(export_dir) if os.path.basename(name).isdigit()]
