"""Training runs: resume after SIGKILL, atomic checkpoints, recipes, the main job's smoke run."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers.processes import ROOT, run_worker, start_module, worker_env
from helpers.readonly import can_make_read_only, set_read_only

import keras
from keras_mixer import cli, data, models, training

# Kill/resume tests of the run directory's files run under one backend; that a resumed run is the
# uninterrupted one is tested on every backend (test_a_run_killed_anywhere_and_resumed_...).
RUN_DIRECTORY_FILES = pytest.mark.backend_independent


def run(args, timeout=400):
    """``python ARGS`` under this backend; returns the ``CompletedProcess``."""
    env = worker_env(keras.backend.backend(), CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def run_resume_worker(run_dir, kill_after=-1, timeout=400, kill_at=None, **settings):
    """``workers.resume_worker`` in a subprocess; returns ``(returncode, output)``.

    ``kill_after``: SIGKILL after that (0-based) epoch; ``kill_at``: at that point of train()
    (``$KERAS_MIXER_TEST_KILL_AT``); ``settings``: TrainConfig overrides.
    """
    env = worker_env(keras.backend.backend(), CUDA_VISIBLE_DEVICES="")
    env.pop(training.KILL_AT_ENV, None)
    if kill_at:
        env[training.KILL_AT_ENV] = kill_at
    proc = start_module("workers.resume_worker", [run_dir, kill_after, json.dumps(settings)], env,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.communicate(timeout=timeout)[0]
    return proc.returncode, output


def leftovers(run_dir):
    return [f for _, _, files in os.walk(run_dir) for f in files if ".tmp" in f]


def history_epochs(run_dir):
    return [row["epoch"] for row in training.read_history(f"{run_dir}/history.csv")]


@RUN_DIRECTORY_FILES
def test_resume_after_sigkill_survives_torn_files(tmp_path):
    """Killed mid-backup, then after an epoch, then with torn files: always resumes, and says from what."""
    run_dir = str(tmp_path / "run")
    backup = os.path.join(run_dir, "backup", "process_0")
    # SIGKILL while the first epoch's backup is being written: only its temporary file exists.
    returncode, output = run_resume_worker(run_dir, kill_at="during_backup_write@1", epochs=4)
    assert returncode == -9, output[-3000:]
    assert [f for f in os.listdir(backup) if not f.startswith(".tmp-")] == [] and leftovers(run_dir)

    # Resumes from last.keras (written before the backup), says so; SIGKILL after epoch 3.
    returncode, output = run_resume_worker(run_dir, 2, epochs=4)
    assert returncode == -9, output[-3000:]
    assert f"resuming {run_dir} from {run_dir}/last.keras: 1 of 4 epochs done, training epochs 2-4" \
        in output, output[-3000:]
    assert "Epoch 2/4" in output and "Epoch 1/4" not in output
    assert history_epochs(run_dir) == [0, 1, 2]
    assert sorted(os.listdir(backup)) == ["epoch-0002.weights.h5", "epoch-0003.weights.h5"]
    keras.saving.load_model(f"{run_dir}/last.keras")  # complete, loadable

    # The newest backup and last.keras torn: the older backup, named, and the torn ones named.
    newest = os.path.join(backup, "epoch-0003.weights.h5")
    with open(newest, "r+b") as f:
        f.truncate(os.path.getsize(newest) // 2)
    open(f"{run_dir}/last.keras", "wb").close()
    returncode, output = run_resume_worker(run_dir, epochs=4)
    assert returncode == 0, output[-3000:]
    assert f"passed over {newest}: cannot be read" in output
    assert f"passed over {run_dir}/last.keras: cannot be read" in output
    assert f"from {backup}/epoch-0002.weights.h5: 2 of 4 epochs done, training epochs 3-4" in output
    assert "Epoch 3/4" in output and "Epoch 2/4" not in output
    assert history_epochs(run_dir) == [0, 1, 2, 3]
    assert json.load(open(f"{run_dir}/results.json"))["epochs"] == 4
    assert not leftovers(run_dir)


@RUN_DIRECTORY_FILES
def test_kill_after_training_never_trains_again(tmp_path):
    """Killed after fit, then after the export: each re-run goes on where the last stopped."""
    run_dir, export_dir = str(tmp_path / "run"), str(tmp_path / "exports")
    settings = dict(epochs=2, export=True, export_dir=export_dir)
    versions = lambda: sorted(os.listdir(os.path.join(export_dir, "run")))  # noqa: E731 (run dir name)
    returncode, output = run_resume_worker(run_dir, kill_at="after_fit", **settings)
    assert returncode == -9 and "Epoch 2/2" in output, output[-3000:]
    assert not os.path.exists(f"{run_dir}/model.keras")

    returncode, output = run_resume_worker(run_dir, kill_at="after_export", **settings)
    assert returncode == -9, output[-3000:]
    assert "all 2 epochs done, evaluating and saving the final model" in output
    assert "Epoch " not in output and "final eval on 359 test images" in output
    assert versions() == ["1"]

    returncode, output = run_resume_worker(run_dir, **settings)  # the export was done: no second one
    assert returncode == 0, output[-3000:]
    assert "Epoch " not in output and "final eval" not in output
    assert versions() == ["1"]
    assert json.load(open(f"{run_dir}/state.json"))["stage"] == "finished"

    returncode, output = run_resume_worker(run_dir, **settings)  # finished: says so, does nothing
    assert returncode == 0, output[-3000:]
    assert f"{run_dir} is finished (2 epochs): top-1" in output and "Epoch " not in output
    assert versions() == ["1"]

    returncode, output = run_resume_worker(run_dir, **settings, re_export=True)
    assert returncode == 0 and "Epoch " not in output, output[-3000:]
    assert versions() == ["1", "2"]
    assert history_epochs(run_dir) == [0, 1] and not leftovers(run_dir)


# Everything random switched on: inception crop, flip, RandAugment, MixUp/CutMix, stochastic
# depth, dropout; and the recipe's state: warmup then decay, EMA, gradient accumulation.
RANDOM_RUN = dict(num_blocks=2, drop_path_rate=0.2, dropout=0.1, flip=True, randaug_magnitude=10,
                  mixup_alpha=0.2, cutmix_alpha=1.0, ema=0.9, grad_accum_steps=2, progress="0")


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
    """The run directory of RANDOM_RUN trained in one go (3 epochs)."""
    run_dir = str(tmp_path_factory.mktemp("uninterrupted") / "run")
    returncode, output = run_resume_worker(run_dir, **RANDOM_RUN)
    assert returncode == 0, output[-3000:]
    return run_dir


def assert_same_run(run_dir, reference):
    """Two run directories hold the same history, bit for bit the same final weights, the same
    final evaluation and best epoch (every backend is deterministic on the CPU for this run)."""
    history = open(f"{run_dir}/history.csv").read()
    assert [row.split(",")[0] for row in history.splitlines()[1:]] == ["0", "1", "2"], history
    assert history == open(f"{reference}/history.csv").read()
    got, want = (models.load_keras_file(f"{path}/model.keras", compile=False)
                 for path in (run_dir, reference))
    for have, expected in zip(got.weights, want.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(have),
                                      keras.ops.convert_to_numpy(expected), err_msg=have.path)
    got, want = (json.load(open(f"{path}/results.json")) for path in (run_dir, reference))
    assert (got["top1"], got["top5"], got["loss"]) == (want["top1"], want["top5"], want["loss"])
    assert open(f"{run_dir}/best.json").read() == open(f"{reference}/best.json").read()


def _kills(backup):
    """``(kill_at, kill_after, what the next start says it resumes from)`` of each kill, in order."""
    return [
        ("mid_epoch@2", -1, None),
        (None, 1, f"from {backup}/epoch-0001.weights.h5: 1 of 3 epochs done"),  # between epochs
        ("during_backup_write@3", -1, f"from {backup}/epoch-0002.weights.h5: 2 of 3 epochs done"),
        ("after_fit", -1, f"from {backup}/epoch-0002.weights.h5: 2 of 3 epochs done"),
    ]


@pytest.mark.parametrize("kills", [
    # Every kill point, under one backend: what each leaves in the run directory does not
    # depend on the backend.
    pytest.param(4, marks=RUN_DIRECTORY_FILES, id="anywhere"),
    # On every backend: killed mid-epoch, the resumed run (weights, RNG states, data position)
    # is still the uninterrupted one.
    pytest.param(1, marks=pytest.mark.skipif(keras.backend.backend() == "tensorflow",
                                             reason="the 'anywhere' case kills mid-epoch too"),
                 id="mid_epoch"),
])
def test_a_run_killed_anywhere_and_resumed_is_the_uninterrupted_run(tmp_path, uninterrupted_run, kills):
    """SIGKILLed mid-epoch, between epochs, while writing a backup and after fit, resumed each
    time: the same weights, history and evaluation as the run that was never stopped."""
    run_dir = str(tmp_path / "run")
    backup = os.path.join(run_dir, "backup", "process_0")
    for kill_at, kill_after, resumed in _kills(backup)[:kills]:
        returncode, output = run_resume_worker(run_dir, kill_after, kill_at=kill_at, **RANDOM_RUN)
        assert returncode == -9, output[-3000:]
        assert resumed is None or resumed in output, output[-3000:]
    returncode, output = run_resume_worker(run_dir, **RANDOM_RUN)
    assert returncode == 0, output[-3000:]
    if kills == 4:  # killed after fit: the last start evaluates and finishes, training nothing
        assert "3 of 3 epochs done" not in output and "all 3 epochs done" in output, output[-3000:]
    else:  # killed in epoch 2: the last start trains epochs 2-3 from epoch 1's backup
        assert f"from {backup}/epoch-0001.weights.h5: 1 of 3 epochs done" in output, output[-3000:]
    assert_same_run(run_dir, uninterrupted_run)


@RUN_DIRECTORY_FILES
def test_a_run_whose_backup_failed_keeps_one_history_row_per_epoch(tmp_path, uninterrupted_run):
    """The backup folder read-only during epoch 2 (its history row and checkpoints are written,
    its backup is not), then writable again: the resumed run trains epoch 2 again, and
    history.csv holds it once (and the run is the uninterrupted one)."""
    if not can_make_read_only():
        pytest.skip("cannot make a directory read-only here (root without chattr +i)")
    run_dir = str(tmp_path / "run")
    backup = os.path.join(run_dir, "backup", "process_0")
    try:
        returncode, output = run_resume_worker(run_dir, read_only_backups_at=2, **RANDOM_RUN)
    finally:
        if os.path.isdir(backup):
            set_read_only(backup, False)
    assert returncode == 1 and "PermissionError" in output, output[-3000:]
    assert os.listdir(backup) == ["epoch-0001.weights.h5"]
    returncode, output = run_resume_worker(run_dir, **RANDOM_RUN)
    assert returncode == 0, output[-3000:]
    assert f"from {backup}/epoch-0001.weights.h5: 1 of 3 epochs done" in output, output[-3000:]
    assert_same_run(run_dir, uninterrupted_run)


def test_trim_history_keeps_one_row_per_done_epoch(tmp_path):
    path = str(tmp_path / "history.csv")
    header = "epoch,accuracy,loss\r\n"
    rows = ["0,0.1,2.0\r\n", "1,0.2,1.9\r\n", "1,0.25,1.8\r\n", "2,0.3,1.7\r\n"]
    with open(path, "w", newline="") as f:
        f.write(header + "".join(rows) + "3,0.4")  # a torn last line
    training.trim_history(path, 2)  # epochs 0 and 1 done: the last row of each stays
    assert open(path, newline="").read() == header + rows[0] + rows[2]
    mtime = os.stat(path).st_mtime_ns
    training.trim_history(path, 2)  # nothing to change: not rewritten
    assert os.stat(path).st_mtime_ns == mtime
    training.trim_history(path, 0)
    assert not os.path.exists(path)
    training.trim_history(path, 3)  # no history yet: nothing to do


def test_run_dir_refuses_other_settings(tmp_path):
    """A run directory names the settings that differ, before anything is loaded or written."""
    run_dir = str(tmp_path / "run")
    original = training.TrainConfig(run_dir=run_dir, num_blocks=4, image_size=8, epochs=3,
                                    export_dir=str(tmp_path / "exports"))
    os.makedirs(run_dir)
    saved = dataclasses.asdict(original)
    training.write_json(f"{run_dir}/config.json", saved)
    training.write_json(f"{run_dir}/state.json", {"stage": "training", "config": saved})
    changed = dataclasses.replace(original, num_blocks=3, learning_rate=0.01)
    for torn in (None, "config.json", "state.json"):  # a single torn file still guards
        if torn:
            training.write_json(f"{run_dir}/config.json", saved)
            open(f"{run_dir}/{torn}", "w").close()
        with pytest.raises(ValueError, match=r"num_blocks \(--num-blocks\): 4 in the run, 3 now; "
                                             r"learning_rate \(--learning-rate\): 0.003"):
            training.train(changed)
    assert sorted(os.listdir(run_dir)) == ["config.json", "state.json"]
    free = dataclasses.replace(original, progress="0", data_dir="elsewhere", strategy="default")
    for setting in ({"export": False}, {"re_export": True}):  # one or the other, never both
        assert training.check_settings(saved, dataclasses.replace(free, **setting)) == []


class NaNFromStep:
    """Wraps data.make_dataset: training batches from global step ``step`` on are NaN."""

    def __init__(self, make_dataset, step):
        self.make_dataset, self.step = make_dataset, step

    def __call__(self, source, *args, training=False, **kwargs):
        import tensorflow as tf

        dataset = self.make_dataset(source, *args, training=training, **kwargs)
        if not training:
            return dataset
        return dataset.enumerate().map(
            lambda i, batch: (tf.where(i >= self.step, batch[0] * float("nan"), batch[0]), batch[1]))


def test_diverged_run_fails_and_publishes_nothing(tmp_path, monkeypatch):
    run_dir, export_dir = str(tmp_path / "run"), str(tmp_path / "exports")
    monkeypatch.setattr(training.data, "make_dataset",
                        NaNFromStep(training.data.make_dataset, step=5))  # epoch 2, step 2
    config = training.TrainConfig(run_dir=run_dir, image_size=8, num_blocks=1, hidden_dim=16,
                                  tokens_mlp_dim=8, channels_mlp_dim=32, epochs=3,
                                  steps_per_epoch=4, batch_size=16, progress="0",
                                  export_dir=export_dir)
    with pytest.raises(training.TrainingDiverged, match=r"loss is nan at epoch 2, step 2\. "
                                                        r"Nothing of this epoch was saved"):
        training.train(config)
    assert not os.path.exists(f"{run_dir}/model.keras") and not os.path.exists(export_dir)
    assert history_epochs(run_dir) == [0]
    assert os.listdir(f"{run_dir}/backup/process_0") == ["epoch-0001.weights.h5"]
    last = keras.saving.load_model(f"{run_dir}/last.keras")
    assert all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in last.weights)
    assert issubclass(training.TrainingDiverged, training.RunError)
    assert training.RunError in cli.user_errors()  # the command line: "error: ...", exit status 2


@pytest.mark.parametrize("changes, message", [
    (dict(epochs=0), r"epochs \(--epochs\) must be an integer >= 1, got 0"),
    (dict(epochs=-2), r"epochs \(--epochs\) must be an integer >= 1"),
    (dict(batch_size=0), r"batch_size \(--batch-size\) must be an integer >= 1"),
    (dict(steps_per_epoch=-5), r"steps_per_epoch \(--steps-per-epoch\) must be an integer >= 1"),
    (dict(learning_rate=float("nan")), r"learning_rate \(--learning-rate\) must be a finite"),
    (dict(learning_rate=1e30), r"learning_rate .* in \(0.0, 10.0\], got 1e\+30"),
    (dict(learning_rate=0.0), "learning_rate"),
    (dict(warmup_epochs=float("inf")), "warmup_epochs"),
    (dict(momentum=1.0), "momentum"),
    (dict(ema=-0.1), "ema"),
    (dict(mix_prob=2.0), "mix_prob"),
    (dict(grad_accum_steps=0), "grad_accum_steps"),
    (dict(image_size=10), r"image_size .* multiple of the patch size 4"),
    (dict(variant="Q/7"), "Unknown Mixer variant"),
    (dict(recipe="nope"), "recipe"),
    (dict(progress="3"), "progress"),
    (dict(bad_images="ignore"), "bad_images"),
])
def test_train_config_is_validated_up_front(changes, message):
    with pytest.raises(ValueError, match=message):
        training.TrainConfig(**changes)


def test_train_cli_refuses_bad_settings(capsys):
    assert cli.main(["--epochs", "0"], command="train") == 2
    assert "error: epochs (--epochs) must be an integer >= 1, got 0." in capsys.readouterr().err


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
        models.save_keras_file(FailingSave(), path)
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


def test_grad_accumulation_keeps_the_schedule_over_the_whole_run():
    """total_steps counts batches; with 4 batches per update the decay still ends with the run.

    The applied learning rates are read off the weight: plain SGD, gradient 1, so
    each update moves it by the learning rate. A schedule counted in optimizer
    updates (batches / 4) would still be at 7/8 of its peak at the last update.
    """
    batches, accum = 8, 4
    config = training.TrainConfig(recipe="finetune", momentum=0.0, clipnorm=0.0,
                                  learning_rate=1.0, decay="linear", grad_accum_steps=accum)
    optimizer = training.build_optimizer(config, total_steps=batches, warmup_steps=0)
    weight = keras.Variable(np.zeros(1, "float32"))
    moves = []
    for _ in range(batches):
        before = float(keras.ops.convert_to_numpy(weight)[0])
        optimizer.apply([keras.ops.ones(1)], [weight])
        moves.append(before - float(keras.ops.convert_to_numpy(weight)[0]))
    # Updates after batches 4 and 8, at the linear schedule's value there (1 - (b - 1) / 8).
    np.testing.assert_allclose(moves, [0, 0, 0, 0.625, 0, 0, 0, 0.125], atol=1e-6)
    assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == batches // accum


def test_recipes_build_the_papers_optimizers():
    config = training.TrainConfig(recipe="pretrain", weight_decay=0.1, grad_accum_steps=4, ema=0.999)
    adamw = training.build_optimizer(config, 100, 10)
    assert isinstance(adamw, training.AdamW) and isinstance(adamw, keras.optimizers.AdamW)
    assert adamw.global_clipnorm == 1.0 and adamw.gradient_accumulation_steps == 4
    assert adamw.use_ema and adamw.ema_momentum == 0.999
    model = training.build_model(training.TrainConfig(image_size=8, num_blocks=1), 10)
    decayed = {v.path for v in model.trainable_variables if adamw._use_weight_decay(v)}
    assert decayed and all("kernel" in p for p in decayed)  # no LayerNorm, no bias
    assert {p for p in (v.path for v in model.trainable_variables) if "kernel" in p} == decayed
    sgd = training.build_optimizer(training.TrainConfig(recipe="finetune"), 100, 10)
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.momentum == 0.9
    assert sgd.global_clipnorm == 1.0 and not sgd.weight_decay
    unknown = training.TrainConfig()
    unknown.recipe = "nope"  # TrainConfig refuses it; build_optimizer checks again
    with pytest.raises(ValueError, match="Unknown recipe"):
        training.build_optimizer(unknown, 1, 0)


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


def test_paper_recipe_on_tfds_with_mixed_precision(tmp_path, monkeypatch):
    """The TFDS path end to end (TFDS's own mock data, offline) with the whole paper recipe:
    RandAugment, MixUp and CutMix, stochastic depth, EMA, mixed precision."""
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(data, "network_problem", lambda: None)  # the mock "downloads" offline
    run_dir = str(tmp_path / "run")
    config = training.TrainConfig(
        data="cifar10", data_dir=str(tmp_path / "tfds"), run_dir=run_dir, image_size=16,
        patch_size=8, num_blocks=1, hidden_dim=16, tokens_mlp_dim=8, channels_mlp_dim=32,
        epochs=1, steps_per_epoch=2, batch_size=8, flip=True, crop_min_area=0.08,
        randaug_ops=2, randaug_magnitude=15, mixup_alpha=0.5, cutmix_alpha=1.0, drop_path_rate=0.1,
        ema=0.99, mixed_precision=True, export=False, progress="0")
    with tfds.testing.mock_data(num_examples=16):
        results = training.train(config)
    assert results["test_examples"] == 16 and np.isfinite(results["loss"])
    assert 0 <= results["top1"] <= 1 and results["model"].output_shape == (None, 10)
    assert json.load(open(f"{run_dir}/results.json"))["epochs"] == 1


def test_image_folder_run_reports_skipped_images(tmp_path, capsys):
    from test_data import write_folder

    root = tmp_path / "pets"
    write_folder(str(root / "train"), per_class=4, size=8)
    write_folder(str(root / "test"), per_class=2, size=8)
    png = (root / "train" / "cat" / "1.png").read_bytes()
    (root / "train" / "cat" / "torn.png").write_bytes(png[:len(png) // 2])
    run_dir = str(tmp_path / "run")
    results = training.train(training.TrainConfig(
        data=str(root), run_dir=run_dir, image_size=8, num_blocks=1, hidden_dim=16,
        tokens_mlp_dim=8, channels_mlp_dim=32, epochs=1, steps_per_epoch=1, batch_size=4,
        export=False, progress="0"))
    assert "skipped 1 undecodable images" in capsys.readouterr().out
    saved = json.load(open(f"{run_dir}/results.json"))
    assert saved["unreadable_count"] == results["unreadable_count"] == 1
    assert saved["unreadable_images"][0]["path"].endswith("torn.png")
    assert results["test_examples"] == 4


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
    history = training.read_history(f"{run_dir}/history.csv")
    assert [row["epoch"] for row in history] == [0]
    assert not leftovers(run_dir)
    # The per-epoch validation (padded batches) and the final evaluation agree, and both are the
    # mean loss over the 359 real test images.
    np.testing.assert_allclose(history[0]["val_loss"], results["loss"], rtol=1e-5)
    np.testing.assert_allclose(history[0]["val_accuracy"], results["top1"], rtol=1e-5)
    from keras_mixer import data

    test = data.load_source("digits", "test")
    images, labels = next(iter(data.make_dataset(test, 359, 16, training=False)))
    model = keras.saving.load_model(os.path.join(run_dir, "model.keras"))
    probabilities = keras.ops.convert_to_numpy(model.predict(images.numpy(), verbose=0))
    true_loss = -np.mean(np.log(np.clip((probabilities * labels.numpy()).sum(-1), 1e-7, 1)))
    np.testing.assert_allclose(results["loss"], true_loss, rtol=1e-4)


def test_train_cli_help():
    result = run([os.path.join(ROOT, "scripts", "train.py"), "--help"], timeout=120)
    assert result.returncode == 0
    for flag in ("--data", "--strategy", "--recipe", "--mixup-alpha", "--grad-accum-steps",
                 "--mixed-precision", "--ema", "--no-export", "--run-dir"):
        assert flag in result.stdout


def _adamw_steps(optimizer, variables, grads):
    for step in grads:
        optimizer.apply([keras.ops.convert_to_tensor(g) for g in step], variables)
    return [keras.ops.convert_to_numpy(v) for v in variables + optimizer.variables]


@pytest.mark.parametrize("accum", [1, 2])
def test_recipe_adamw_matches_keras_adamw(accum):
    """The recipe's AdamW (fused on torch) = keras.optimizers.AdamW: clipping, decay mask,
    schedule, accumulation. A large epsilon and tiny gradients make its placement count."""
    rng = np.random.default_rng(0)
    shapes = {"kernel": (7, 5), "bias": (5,), "gamma": (5,), "other_kernel": (3, 4)}
    start = {name: rng.normal(size=shape).astype("float32") for name, shape in shapes.items()}
    scales = [1e-3, 30.0, 1e-3, 1.0, 1e-3, 30.0]  # clipped (global norm > 1) and not
    grads = [[(rng.normal(size=shape) * scale).astype("float32") for shape in shapes.values()]
             for scale in scales]
    results = []
    for cls in (keras.optimizers.AdamW, training.AdamW):
        optimizer = cls(learning_rate=training.WarmupLinearDecay(0.1, 2, len(scales)),
                        weight_decay=0.5, epsilon=1e-3, global_clipnorm=1.0,
                        gradient_accumulation_steps=accum if accum > 1 else None)
        optimizer.exclude_from_weight_decay(var_names=training.NO_WEIGHT_DECAY)
        variables = [keras.Variable(value, name=name) for name, value in start.items()]
        results.append(_adamw_steps(optimizer, variables, grads))
    expected, got = results
    assert len(expected) == len(got)
    for want, have in zip(expected, got):
        np.testing.assert_allclose(have, want, rtol=1e-6, atol=1e-6)
    assert np.abs(expected[0] - start["kernel"]).max() > 0.05  # the steps moved the weights


def test_recipe_adamw_trains_like_keras_adamw():
    """The same, inside compiled training steps (a constant learning rate, a tiny Mixer)."""
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (4, 8, 8, 3)).astype("float32")
    labels = rng.integers(0, 3, 4)
    results = []
    for cls in (keras.optimizers.AdamW, training.AdamW):
        keras.utils.set_random_seed(0)
        model = models.MlpMixer(4, 1, 8, 4, 16, num_classes=3, input_shape=(8, 8, 3),
                                classifier_activation=None)
        optimizer = cls(learning_rate=0.01, weight_decay=0.5, epsilon=1e-3, global_clipnorm=0.1)
        optimizer.exclude_from_weight_decay(var_names=training.NO_WEIGHT_DECAY)
        model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        for _ in range(3):
            model.train_on_batch(images, labels)
        results.append([keras.ops.convert_to_numpy(v) for v in model.variables])
    for want, have in zip(*results):
        np.testing.assert_allclose(have, want, rtol=1e-6, atol=1e-6)


def test_recipe_adamw_run_resumes_on_every_backend(tmp_path):
    """A compiled .keras saved with the recipe's AdamW loads (safe mode) on every backend,
    and its next step there gives the weights of the next step here."""
    config = training.TrainConfig(image_size=8, num_blocks=1, weight_decay=0.1)
    model = training.build_model(config, 10)
    training.compile_model(model, config, total_steps=10, warmup_steps=1)
    rng = np.random.default_rng(1)
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    first, second = ([rng.normal(size=shape).astype("float32") for shape in shapes]
                     for _ in range(2))
    model.optimizer.apply([keras.ops.convert_to_tensor(g) for g in first], model.trainable_variables)
    path = str(tmp_path / "run.keras")
    models.save_keras_file(model, path)
    expected = _adamw_steps(model.optimizer, model.trainable_variables, [second])
    for other in {"jax", "tensorflow", "torch"} - {keras.backend.backend()}:
        result = run_worker(other, "workers.backend_worker:optimizer_step", path, second, timeout=300)
        assert result["optimizer"] == "AdamW", other
        for want, have in zip(expected, result["weights"]):
            np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-6, err_msg=other)
