"""The run directory: settings, stage (``state.json``), checkpoints, backups, history, resume.

Every file is written through a temporary file and a rename, so a kill leaves the
previous version whole.
"""

import csv
import dataclasses
import glob
import json
import os
import signal
import sys

import keras
import numpy as np

from keras_mixer.files import TEMP_PREFIX, atomic_output, write_text
from keras_mixer.training.config import FREE_SETTINGS, TrainConfig

STATE_FILE = "state.json"

BACKUP_NAME = "epoch-{:04d}.weights.h5"

# Test hook: SIGKILL the process at a named point of train() (see kill_point).
KILL_AT_ENV = "KERAS_MIXER_TEST_KILL_AT"


class RunError(RuntimeError):
    """A run cannot go on as asked; the message says why and what to do."""


class TrainingDiverged(RunError):
    """The loss (or the model's weights) stopped being finite."""


class AtomicCheckpoint(keras.callbacks.Callback):
    """``model.save(filepath)`` after each epoch, through a temporary file and ``os.replace``.

    A kill at any moment leaves the previous file whole. With ``monitor``, only after an
    epoch whose ``logs[monitor]`` beats the best so far (higher is better; ``best``
    starts the comparison, e.g. from a resumed run's ``best.json``), and each new best
    is recorded in ``best_json``. With ``scratch_dir`` (a process other than the
    chief) the model is saved into a file there, which is removed: under TF
    multi-worker and multi-process JAX every process must take part in saving, but
    only the chief writes to the run directory.
    """

    def __init__(self, filepath, scratch_dir=None, monitor=None, best=None, best_json=None):
        super().__init__()
        self.filepath, self.scratch_dir = os.fspath(filepath), scratch_dir
        self.monitor, self.best, self.best_json = monitor, best, best_json

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor is not None:
            value = (logs or {}).get(self.monitor)
            if value is None or not np.isfinite(value) or (self.best is not None
                                                            and value <= self.best):
                return
            self.best = float(value)
        if self.scratch_dir:
            scratch = os.path.join(self.scratch_dir, os.path.basename(self.filepath))
            self.model.save(scratch)
            os.remove(scratch)
            return
        with atomic_output(self.filepath) as temp:
            self.model.save(temp)
        if self.monitor is not None and self.best_json:
            write_json(self.best_json, {"epoch": epoch, "monitor": self.monitor, "value": self.best})


def checkpoint_callbacks(run_dir, scratch_dir=None, monitor="val_accuracy"):
    """``last.keras`` every epoch and ``best.keras`` on a new best ``monitor``; the best so far
    survives a resume (``best.json``). ``scratch_dir``: save into it instead, writing nothing
    to ``run_dir`` (see :class:`AtomicCheckpoint`)."""
    best_json = os.path.join(run_dir, "best.json")
    best = None
    if os.path.exists(best_json):
        with open(best_json) as f:
            best = json.load(f)["value"]
    return [AtomicCheckpoint(os.path.join(run_dir, "last.keras"), scratch_dir),
            AtomicCheckpoint(os.path.join(run_dir, "best.keras"), scratch_dir, monitor=monitor,
                             best=best, best_json=best_json)]


def write_json(path, obj):
    """``obj`` as indented JSON at ``path``, atomically."""
    return write_text(path, json.dumps(obj, indent=2))


def read_history(csv_path):
    """Per-epoch rows of ``history.csv``; a resumed epoch's repeated row replaces the older one."""
    rows = {}
    with open(csv_path) as f:
        for row in csv.DictReader(f):
            rows[int(row["epoch"])] = {k: float(v) for k, v in row.items() if v not in ("", None)}
    return [rows[epoch] for epoch in sorted(rows)]


def trim_history(csv_path, epochs_done):
    """Make ``history.csv`` hold exactly one row per epoch before ``epochs_done``, in order.

    Called before a run goes on from ``epochs_done`` epochs: rows of later epochs
    (written before a kill or a failed write, and to be trained again) and the
    older copies of a repeated epoch go, the last row written for each epoch
    stays, and a torn last line goes. The file is rewritten atomically,
    only when that changes it; with no epoch done it is removed (the run's
    ``CSVLogger`` writes a new one).

    Args:
        csv_path: the run's ``history.csv`` (absent: nothing to do).
        epochs_done: the whole epochs the run goes on from.
    """
    try:
        with open(csv_path, newline="") as f:
            lines = f.read().splitlines(keepends=True)
    except FileNotFoundError:
        return
    if not epochs_done:
        os.remove(csv_path)
        return
    if not lines:
        return
    header = next(csv.reader(lines[:1]))
    rows = {}
    for line, fields in zip(lines[1:], csv.reader(lines[1:])):
        try:
            epoch = int(fields[header.index("epoch")])
        except (ValueError, IndexError):  # a torn line
            continue
        if len(fields) == len(header) and line.endswith("\n") and 0 <= epoch < epochs_done:
            rows[epoch] = line
    kept = lines[:1] + [rows[epoch] for epoch in sorted(rows)]
    if kept != lines:
        write_text(csv_path, "".join(kept))


def plot_history(csv_path, png_path):
    """Loss and accuracy curves (train and validation) from ``history.csv``, as a PNG.

    Returns ``png_path``, or ``None`` where matplotlib (the ``plots`` extra) is not installed.
    """
    try:
        import matplotlib
    except ImportError:
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = read_history(csv_path)
    epochs = [row["epoch"] + 1 for row in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, title in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "top-1 accuracy")):
        for prefix, label in (("", "train"), ("val_", "validation")):
            values = [row.get(prefix + metric) for row in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, marker="o", markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_output(png_path) as temp:
        fig.savefig(temp, dpi=100)
    plt.close(fig)
    return png_path


def kill_point(point, epoch=None):
    """Test hook: SIGKILL this process here when ``$KERAS_MIXER_TEST_KILL_AT`` names ``point``.

    ``point`` or ``point@EPOCH`` (1-based; for points inside an epoch). The points,
    in order: ``mid_epoch`` (after the epoch's first step), ``during_backup_write`` (the epoch's backup is written to its temporary
    file, not yet renamed), ``after_fit``, ``after_model_save``, ``after_results``,
    ``after_export``. The kill tests (tests/test_training.py) stop a run at an exact
    stage with it; unset, it does nothing.
    """
    wanted = os.environ.get(KILL_AT_ENV)
    if wanted and wanted in (point, f"{point}@{epoch}"):
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


class DivergenceGuard(keras.callbacks.TerminateOnNaN):
    """``TerminateOnNaN`` that stops ``fit`` with :class:`TrainingDiverged` at once.

    Raised at the first batch with a non-finite loss (or an epoch ending with a
    non-finite validation loss), before the epoch-end callbacks run: no
    checkpoint, backup or history row of a diverged epoch is written. Before
    every one of the run's callbacks that writes.
    """

    def __init__(self, learning_rate):
        super().__init__(raise_error=True)
        self.learning_rate = learning_rate
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def _diverged(self, what):
        return TrainingDiverged(
            f"Training diverged: {what}. Nothing of this epoch was "
            f"saved, no model.keras was written and nothing was exported; the run directory "
            f"keeps its last good epoch. Lower --learning-rate (this run: {self.learning_rate:g}), "
            f"lengthen --warmup-epochs or keep --clipnorm on, in a new --run-dir.")

    def on_batch_end(self, batch, logs=None):
        try:
            super().on_batch_end(batch, logs)
        except RuntimeError:
            raise self._diverged(f"the loss is {logs.get('loss')} at epoch {self.epoch + 1}, "
                                 f"step {batch + 1}") from None
        if batch == 0:
            kill_point("mid_epoch", self.epoch + 1)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get("val_loss")
        if value is not None and not np.isfinite(value):
            raise self._diverged(f"the validation loss is {value} after epoch {epoch + 1}")


def list_backups(directory):
    """The ``epoch-NNNN.weights.h5`` backups in ``directory``, newest first."""
    return sorted(glob.glob(os.path.join(directory, BACKUP_NAME.replace("{:04d}", "[0-9]" * 4))),
                  reverse=True)


class RunBackup(keras.callbacks.Callback):
    """Model and optimizer after every epoch: ``epoch-NNNN.weights.h5``, the newest ``keep`` kept.

    Each file is written under a temporary name and renamed, so a file under its
    final name is whole; older ones are removed only after the new one is in place.
    A kill at any moment leaves at least the previous epoch's backup. The last of
    the run's callbacks: an epoch counts as done once everything else is written.
    """

    def __init__(self, directory, keep=2):
        super().__init__()
        self.directory = directory
        self.keep = keep

    def on_epoch_end(self, epoch, logs=None):
        final = os.path.join(self.directory, BACKUP_NAME.format(epoch + 1))
        with atomic_output(final) as temp:
            self.model.save_weights(temp)
            kill_point("during_backup_write", epoch + 1)
        for old in list_backups(self.directory)[self.keep:]:
            os.remove(old)


def epochs_done(iterations, steps, grad_accum_steps, max_epochs):
    """The whole epochs that ``iterations`` optimizer steps make, or ``None`` if none match."""
    matches = [e for e in range(max_epochs + 1) if e * steps // grad_accum_steps == iterations]
    return matches[0] if len(matches) == 1 else None


def restore_training_state(model, run_dir, steps, config):
    """Load the newest readable training state of ``run_dir`` into ``model`` (built, compiled).

    Tries the newest backup, then ``last.keras``, then older backups (the chief's,
    so every process resumes at the same epoch); a file that cannot be read, or
    whose optimizer step count is not a whole number of epochs, is passed over
    with a message. Returns ``(epochs done, path, messages about files passed over)``,
    ``(0, None, [])`` when the run has nothing yet; raises :class:`RunError` when it
    has files but none is usable.
    """
    backups = list_backups(os.path.join(run_dir, "backup", "process_0"))
    candidates = backups[:1] + [os.path.join(run_dir, "last.keras")] + backups[1:]
    candidates = [path for path in candidates if os.path.exists(path)]
    problems = []
    for path in candidates:
        try:
            model.load_weights(path)
        except Exception as error:  # a torn or foreign file: try the next one
            reason = (str(error).strip().splitlines() or [""])[0][:200]
            problems.append(f"{path}: cannot be read ({type(error).__name__}: {reason})")
            continue
        iterations = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        name = os.path.basename(path)
        if name.startswith("epoch-"):  # a backup's name says its epoch: check its step count
            done = int(name[6:10])
            if done > config.epochs or done * steps // config.grad_accum_steps != iterations:
                done = None
        else:
            done = epochs_done(iterations, steps, config.grad_accum_steps, config.epochs)
        if done is None:
            problems.append(f"{path}: its {iterations} optimizer steps are not a whole number of "
                            f"the run's epochs")
            continue
        return done, path, problems
    if problems:
        raise RunError(
            f"Run directory {run_dir!r} has training state but none of it can be resumed:\n  "
            + "\n  ".join(problems) + "\nMove the run directory aside (or pass a new --run-dir) "
            "to train from scratch.")
    return 0, None, problems


def _load_json(path):
    """``(object, None)``, ``(None, None)`` when missing, ``(None, reason)`` when unreadable."""
    try:
        with open(path) as f:
            value = json.load(f)
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as error:
        return None, f"{type(error).__name__}: {error}"
    return (value, None) if isinstance(value, dict) else (None, "not a JSON object")


def _has_training_files(run_dir):
    return (os.path.exists(os.path.join(run_dir, "last.keras"))
            or os.path.exists(os.path.join(run_dir, "model.keras"))
            or bool(glob.glob(os.path.join(run_dir, "backup", "*", "*.h5"))))


def check_settings(saved, config):
    """``[(field, run's value, this config's value)]`` of the settings that differ from ``saved``
    (a run's ``config.json``), leaving out :data:`FREE_SETTINGS`."""
    differ = []
    for field in dataclasses.fields(TrainConfig):
        if field.name in FREE_SETTINGS:
            continue
        old, new = saved.get(field.name, field.default), getattr(config, field.name)
        if old != new:
            differ.append((field.name, old, new))
    return differ


def open_run_dir(config):
    """The state of ``config.run_dir`` (``{"stage": "new"}`` when it has none), after checking
    that ``config`` may go on with it.

    The run's settings are kept twice (config.json, and in state.json), so one torn
    file does not lose them; settings other than :data:`FREE_SETTINGS` must match.
    """
    run_dir = config.run_dir
    state, state_problem = _load_json(os.path.join(run_dir, STATE_FILE))
    saved, config_problem = _load_json(os.path.join(run_dir, "config.json"))
    if state_problem:
        print(f"{os.path.join(run_dir, STATE_FILE)} is unreadable ({state_problem}); going on "
              f"from the run's checkpoints")
    recorded = any(os.path.exists(os.path.join(run_dir, name)) for name in (STATE_FILE, "config.json"))
    if not recorded and not _has_training_files(run_dir):
        return {"stage": "new"}
    settings = (state or {}).get("config") or saved
    if settings is None and not _has_training_files(run_dir):
        return {"stage": "new"}  # torn records and nothing trained: nothing to lose
    if settings is None:
        raise RunError(
            f"Run directory {run_dir!r} holds checkpoints but no readable record of the settings "
            f"they were trained with (config.json: {config_problem or 'missing'}), so resuming "
            f"could load them into a different model. Restore config.json, or pass a new --run-dir.")
    differ = check_settings(settings, config)
    if differ:
        listing = "; ".join(f"{name} (--{name.replace('_', '-')}): {old!r} in the run, {new!r} now"
                            for name, old, new in differ)
        raise ValueError(
            f"Run directory {run_dir!r} was trained with other settings: {listing}. Resuming "
            f"would continue its checkpoints with a different model, data or schedule. Repeat "
            f"the run's settings (its config.json) to resume it, or pass a new --run-dir.")
    state = dict(state or {"stage": "training"})
    state["config"] = dataclasses.asdict(config)
    return state


def remove_temp_files(run_dir):
    """Remove temporary files that a killed run left (``.tmp-*``; never read by anything)."""
    for pattern in (os.path.join(run_dir, TEMP_PREFIX + "*"),
                    os.path.join(run_dir, "backup", "*", TEMP_PREFIX + "*")):
        for path in glob.glob(pattern):
            if os.path.isfile(path):
                os.remove(path)
