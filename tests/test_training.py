"""Training runs: resume after SIGKILL, atomic checkpoints, recipes, the main job's smoke run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers.processes import ROOT, start_module, worker_env

import keras
from keras_mixer import training


def run(args, timeout=400):
    """``python ARGS`` under this backend; returns the ``CompletedProcess``."""
    env = worker_env(keras.backend.backend(), CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def run_resume_worker(run_dir, kill_after, timeout=400):
    """``workers.resume_worker`` in a subprocess; returns ``(returncode, output)``."""
    proc = start_module("workers.resume_worker", [run_dir, kill_after],
                        worker_env(keras.backend.backend(), CUDA_VISIBLE_DEVICES=""),
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.communicate(timeout=timeout)[0]
    return proc.returncode, output


def leftovers(run_dir):
    return [f for _, _, files in os.walk(run_dir) for f in files if ".tmp" in f]


def test_resume_after_sigkill_continues_at_next_epoch(tmp_path):
    run_dir = str(tmp_path / "run")
    returncode, output = run_resume_worker(run_dir, 1)  # SIGKILL right after epoch 2 of 3
    assert returncode == -9, output[-3000:]
    assert [row["epoch"] for row in training.read_history(f"{run_dir}/history.csv")] == [0, 1]
    assert not leftovers(run_dir)
    keras.saving.load_model(f"{run_dir}/last.keras")  # complete, loadable

    returncode, output = run_resume_worker(run_dir, -1)
    assert returncode == 0, output[-3000:]
    assert "Epoch 3/3" in output
    assert "Epoch 1/3" not in output and "Epoch 2/3" not in output
    assert [row["epoch"] for row in training.read_history(f"{run_dir}/history.csv")] == [0, 1, 2]
    assert json.load(open(f"{run_dir}/results.json"))["epochs"] == 3
    assert not leftovers(run_dir)


class FailingSave:
    """A model whose save dies half-way through writing."""

    def save(self, path):
        with open(path, "wb") as f:
            f.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed while saving")


def test_checkpoint_is_replaced_atomically(tmp_path):
    path = str(tmp_path / "last.keras")
    with open(path, "wb") as f:
        f.write(b"previous checkpoint")
    with pytest.raises(KeyboardInterrupt):
        training.save_atomically(FailingSave(), path)
    assert open(path, "rb").read() == b"previous checkpoint"
    assert os.listdir(tmp_path) == ["last.keras"]


def test_schedules_warm_up_then_decay():
    linear = training.WarmupLinearDecay(1.0, warmup_steps=10, total_steps=110)
    lrs = [float(keras.ops.convert_to_numpy(linear(s))) for s in (0, 5, 10, 60, 110, 200)]
    np.testing.assert_allclose(lrs, [0.0, 0.5, 1.0, 0.5, 0.0, 0.0], atol=1e-6)
    config = training.TrainConfig(recipe="finetune", learning_rate=0.03)
    cosine = training.learning_rate_schedule(config, total_steps=110, warmup_steps=10)
    lrs = [float(keras.ops.convert_to_numpy(cosine(s))) for s in (0, 5, 10, 60, 110)]
    np.testing.assert_allclose(lrs, [0.0, 0.015, 0.03, 0.015, 0.0], atol=1e-6)


def test_recipes_build_the_papers_optimizers():
    config = training.TrainConfig(recipe="pretrain", weight_decay=0.1, grad_accum_steps=4, ema=0.999)
    adamw = training.build_optimizer(config, 100, 10)
    assert isinstance(adamw, keras.optimizers.AdamW)
    assert adamw.global_clipnorm == 1.0 and adamw.gradient_accumulation_steps == 4
    assert adamw.use_ema and adamw.ema_momentum == 0.999
    model = training.build_model(training.TrainConfig(image_size=8, num_blocks=1), 10)
    decayed = {v.path for v in model.trainable_variables if adamw._use_weight_decay(v)}
    assert decayed and all("kernel" in p for p in decayed)  # no LayerNorm, no bias
    assert {p for p in (v.path for v in model.trainable_variables) if "kernel" in p} == decayed
    sgd = training.build_optimizer(training.TrainConfig(recipe="finetune"), 100, 10)
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.momentum == 0.9
    assert sgd.global_clipnorm == 1.0 and not sgd.weight_decay
    with pytest.raises(ValueError, match="Unknown recipe"):
        training.build_optimizer(training.TrainConfig(recipe="nope"), 1, 0)


def test_finetune_init_copies_matching_layers(tmp_path):
    source = training.build_model(training.TrainConfig(image_size=8, num_blocks=1), 10)
    source.get_layer("head").kernel.assign(np.ones((64, 10), "float32"))
    source.save(tmp_path / "src.keras")
    model = training.build_model(
        training.TrainConfig(image_size=8, num_blocks=1, init=str(tmp_path / "src.keras")), 3)
    for name in ("stem", "mixer_block_0", "pre_head_layer_norm"):
        for a, b in zip(model.get_layer(name).get_weights(), source.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    assert model.get_layer("head").get_weights()[0].shape == (64, 3)


def test_main_job_smoke(tmp_path):
    """scripts/train.py with its defaults, cut to 2 short epochs."""
    run_dir = str(tmp_path / "main")
    result = run([os.path.join(ROOT, "scripts", "train.py"), "--epochs", "2",
                  "--steps-per-epoch", "5", "--num-blocks", "1", "--run-dir", run_dir, "--no-export"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "final eval on 359 test images: top-1" in result.stdout
    for name in ("model.keras", "last.keras", "best.keras", "history.csv", "curves.png",
                 "results.json", "config.json"):
        assert os.path.exists(os.path.join(run_dir, name)), name
    results = json.load(open(os.path.join(run_dir, "results.json")))
    assert results["backend"] == keras.backend.backend() and 0 <= results["top1"] <= 1
    model = keras.saving.load_model(os.path.join(run_dir, "model.keras"))
    assert model.output_shape == (None, 10)


def test_main_job_on_two_replicas(tmp_path):
    """train.py data-parallel on 2 CPU devices (jax, tensorflow) or 2 torchrun processes."""
    import socket

    run_dir = str(tmp_path / "dp")
    args = [os.path.join(ROOT, "scripts", "train.py"), "--epochs", "1", "--steps-per-epoch", "3",
            "--batch-size", "16", "--num-blocks", "1", "--run-dir", run_dir, "--no-export"]
    if keras.backend.backend() == "torch":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        result = run(["-m", "torch.distributed.run", "--nproc-per-node", "2",
                      "--master-port", str(port), *args])
    else:
        result = run([*args, "--cpu-devices", "2"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.load(open(os.path.join(run_dir, "results.json")))
    assert results["replicas"] == 2, results
    assert results["strategy"] in ("mirrored", "data_parallel", "torch_ddp")
    assert 0 <= results["top1"] <= 1 and results["test_examples"] == 359
    assert [row["epoch"] for row in training.read_history(f"{run_dir}/history.csv")] == [0]
    assert not leftovers(run_dir)


def test_train_cli_help():
    result = run([os.path.join(ROOT, "scripts", "train.py"), "--help"], timeout=120)
    assert result.returncode == 0
    for flag in ("--data", "--strategy", "--recipe", "--mixup-alpha", "--grad-accum-steps",
                 "--mixed-precision", "--ema", "--no-export", "--run-dir"):
        assert flag in result.stdout
