"""Training with ``model.fit``: recipes, run directory, checkpoints, evaluation.

:func:`train` runs one :class:`TrainConfig` end to end on any backend and
distribution (see :mod:`keras_mixer.distribute`); ``scripts/train.py`` is its
command line. The run directory holds::

    config.json        the run's settings (a second copy in state.json)
    state.json         the run's stage: training, evaluated (results, class names), finished (export)
    backup/process_0/  epoch-NNNN.weights.h5: model + optimizer after the last two epochs
    last.keras         model after the latest epoch (written atomically)
    best.keras         model with the best validation accuracy so far (atomically)
    model.keras        the final model (after the last epoch; EMA weights if any)
    history.csv        per-epoch metrics          logs/   TensorBoard
    curves.png         loss / accuracy curves     results.json   final evaluation

Re-running a command goes on from where its run directory stands: a killed
run resumes after its last whole epoch (from the newest readable backup, else
``last.keras``, else the older backup), a run killed after training goes on at
the evaluation or the export without training again, and a finished run says so
and stops (``re_export`` exports it again). A resumed run is the run it
resumes: the backups hold the model and the optimizer (step, moments, EMA), and
everything random is a pure function of the seed and the position (the data
stream of :func:`keras_mixer.data.make_dataset`, started at the resumed batch;
dropout and stochastic depth, seeded by :class:`RunSeeds`), so it ends with the
weights of an uninterrupted run, and ``history.csv`` with one row per epoch
(:func:`trim_history`). A run directory refuses settings
that differ from its own (other than :data:`FREE_SETTINGS`). Every file is
written through a temporary file and a rename, so a kill leaves the previous
version whole; a loss that stops being finite stops training before anything of
that epoch is saved (:class:`DivergenceGuard`), and nothing is exported.
"""

import contextlib
import dataclasses
import os
import tempfile
import time

import keras
import numpy as np

from keras_mixer import data, deploy, distribute, models
from keras_mixer.training.config import FREE_SETTINGS, RECIPES, TrainConfig
from keras_mixer.training.optimizer import AdamW
from keras_mixer.training.recipe import (
    NO_WEIGHT_DECAY,
    WarmupLinearDecay,
    build_model,
    build_optimizer,
    compile_model,
    initialize_from,
    learning_rate_schedule,
    top_k_of,
)
from keras_mixer.training.rundir import (
    KILL_AT_ENV,
    STATE_FILE,
    AtomicCheckpoint,
    DivergenceGuard,
    RunBackup,
    RunError,
    TrainingDiverged,
    checkpoint_callbacks,
    check_settings,
    open_run_dir,
    plot_history,
    read_history,
    restore_training_state,
    write_json,
    kill_point,
    remove_temp_files,
    trim_history,
)
from keras_mixer.training.randomness import RunSeeds


def export_model(model_path, config, class_names, version=None):
    """Export the saved model to ``<export_dir>/<name>/<version>/`` for TF Serving."""
    return deploy.export_saved_model(model_path, export_dir=config.export_dir,
                                     name=config.export_name, version=version, labels=class_names,
                                     allow_new_task=config.allow_new_task)


_EXPORT_NAME_HINT = ("pass --export-name NAME (a re-run with it resumes this run), or "
                     "--allow-new-task to replace the served model on purpose")


def _has_tensorboard():
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def _unshare_ema_arrays(model):
    """JAX with EMA: give the model's variables arrays of their own after fit().

    Keras swaps the EMA weights in by assigning the optimizer's average variables
    to the model's, which on JAX makes them share arrays; evaluate() donates the
    model's arrays, deleting the optimizer's too, and saving the model then fails
    ("Array has been deleted").
    """
    if keras.backend.backend() == "jax" and getattr(model.optimizer, "use_ema", False):
        for variable in model.trainable_variables:
            variable.assign(keras.ops.copy(variable.value))


def _check_finite_weights(model):
    bad = [v.path for v in model.weights
           if not np.all(np.isfinite(keras.ops.convert_to_numpy(v)))]
    if bad:
        raise TrainingDiverged(
            f"Training diverged: {len(bad)} weights are not finite ({', '.join(bad[:3])}...). "
            f"No model.keras was written and nothing was exported. Lower --learning-rate, in "
            f"a new --run-dir.")


def _report_unreadable(sources, other_process=None):
    """``[{"split", "path", "reason"}]`` of the images left out, printed one per line.

    ``other_process``: the distribution of a process other than the chief, which reports
    only what it found in its own shard of the training split.
    """
    if other_process is not None:
        sources = {"train": sources["train"]}
    found = [{"split": split, "path": path, "reason": reason}
             for split, source in sources.items() for path, reason in source.unreadable]
    if found:
        who = (f"process {other_process.process_index} of {other_process.process_count}: "
               if other_process is not None else "")
        print(f"{who}skipped {len(found)} undecodable images (--bad-images fail refuses them instead):")
        for item in found:
            print(f"  {item['split']}: {item['path']}: {item['reason']}")
    return found


@contextlib.contextmanager
def _scratch_dir(chief, process_index):
    """``None`` in the chief; elsewhere a temporary directory, removed at the end."""
    if chief:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix=f"keras-mixer-process-{process_index}-") as scratch:
        yield scratch


def train(config, callbacks=(), distribution=None):
    """Train ``config`` with ``model.fit``; returns a dict with the final evaluation.

    Goes on from where ``config.run_dir`` stands (see the module docstring).

    Args:
        config: a :class:`TrainConfig`.
        callbacks: extra Keras callbacks (run after the run directory's own).
        distribution: a :class:`keras_mixer.distribute.Distribution`; default
            :func:`keras_mixer.distribute.setup_distribution` from ``config``.

    Returns:
        A dict of the final evaluation on the test split (also in the run
        directory's ``results.json``): ``top1``, ``top5`` (``top_k``: the k),
        ``loss``, ``test_examples``, ``epochs``, ``backend``, ``strategy``,
        ``replicas``, the undecodable images left out and ``seconds``; plus
        ``model`` (the trained :class:`~keras_mixer.MlpMixer`, as saved in
        ``model.keras``) and ``export`` (the SavedModel's version directory,
        when the run exports).

    Raises:
        ValueError: a setting that cannot work, data that do not fit (class
            folders), or settings that differ from the run directory's.
        TrainingDiverged: the loss stopped being finite (nothing is saved as the
            final model or exported).
        RunError: the run directory has training state that cannot be resumed.

    Examples:
        Two steps of a one-block Mixer on the offline digits, without export:

        >>> config = keras_mixer.TrainConfig(
        ...     run_dir=os.path.join(tempfile.mkdtemp(), "tiny"), epochs=1, steps_per_epoch=2,
        ...     batch_size=16, num_blocks=1, export=False, progress="0")
        >>> results = keras_mixer.train(config)
        training a Mixer (patch 4, 1 blocks, C=64, D_S=32, D_C=256) at 16px on digits: ...
        final eval on 359 test images: top-1 ...
        >>> results["epochs"], results["test_examples"], results["model"].config.num_classes
        (1, 359, 10)
        >>> all(os.path.isfile(os.path.join(config.run_dir, name))
        ...     for name in ("model.keras", "history.csv", "results.json"))
        True
    """
    start = time.time()
    config.validate()
    run_dir = config.run_dir
    state = open_run_dir(config)  # before anything slow: refuses other settings at once
    dist = distribution or distribute.setup_distribution(config.strategy, config.cpu_devices,
                                                         config.model_parallel)
    chief = dist.is_chief
    if state["stage"] in ("evaluated", "finished"):
        if chief and state["stage"] == "evaluated":
            print(f"resuming {run_dir}: trained ({config.epochs} epochs) and evaluated; exporting")
        return _finish(config, state, chief, start)

    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        keras.config.set_dtype_policy("mixed_bfloat16")
    train_source, test_source = data.load_splits(config.data, config.data_dir, shard=dist.shard,
                                                 bad_images=config.bad_images,
                                                 eval_shard=dist.eval_shard,
                                                 log=print if chief else None)
    # Each process checked its own shard of the training images: each reports its own.
    unreadable = _report_unreadable({"train": train_source, "test": test_source},
                                    dist if not chief else None)
    global_examples = train_source.total_examples
    if chief:
        if config.image_size_notice():
            print(config.image_size_notice())
        print(f"training {config.architecture_description()} at {config.image_size}px on "
              f"{config.data}: {global_examples} training / {test_source.total_examples} test images, "
              f"{train_source.num_classes} classes; {keras.backend.backend()} backend, "
              f"{dist.name} x{dist.replicas}; run directory {run_dir}")
    steps = config.steps_per_epoch or global_examples // config.batch_size
    if steps < 1:
        raise ValueError(f"{global_examples} training examples make no batch of {config.batch_size}: "
                         f"lower --batch-size.")
    batch_size = dist.pipeline_batch_size(config.batch_size)
    # Data parallel: pad the last eval batch with weight-0 blanks so it splits evenly.
    pad = dist.replicas > 1
    test_data = data.make_dataset(test_source, batch_size, config.image_size, training=False,
                                  crop_fraction=config.crop_fraction, pad_to_batch=pad)
    test_data = dist.distribute_dataset(test_data, config.batch_size)
    total_steps = steps * config.epochs
    warmup_steps = int(round(config.warmup_epochs * steps))

    with dist.scope():
        model = build_model(config, train_source.num_classes)
        compile_model(model, config, total_steps, warmup_steps)
        model.optimizer.build(model.trainable_variables)
    dist.prepare_model(model)
    if chief and config.export:  # before training: a run must not end in a refused export
        deploy.check_served_task(os.path.join(config.export_dir, config.export_name),
                                 deploy.task_of(model.config, train_source.class_names),
                                 config.allow_new_task, how=_EXPORT_NAME_HINT)

    os.makedirs(run_dir, exist_ok=True)
    if chief:
        remove_temp_files(run_dir)
        if state["stage"] == "new":
            write_json(os.path.join(run_dir, "config.json"), dataclasses.asdict(config))
            state = {"stage": "training", "config": dataclasses.asdict(config)}
            write_json(os.path.join(run_dir, STATE_FILE), state)
    with dist.scope():
        done, restored_from, problems = restore_training_state(model, run_dir, steps, config)
    # The training stream is a pure function of the seed and the batch index (of this process's
    # shard: each shard has a seed of its own), and in a resumed run starts at the batch where
    # it stopped.
    train_data = data.make_dataset(
        train_source, batch_size, config.image_size, training=True,
        augment=config.augmentation(), seed=config.seed, repeat=True, start_batch=done * steps,
    )
    train_data = dist.distribute_dataset(train_data, config.batch_size)
    if chief:
        trim_history(os.path.join(run_dir, "history.csv"), done)
        for problem in problems:
            print(f"resume: passed over {problem}")
        if restored_from and done < config.epochs:
            todo = (f"epochs {done + 1}-{config.epochs}" if done + 1 < config.epochs
                    else f"epoch {config.epochs}")
            print(f"resuming {run_dir} from {restored_from}: {done} of {config.epochs} epochs "
                  f"done, training {todo}")
        elif restored_from:
            print(f"resuming {run_dir} from {restored_from}: all {config.epochs} epochs done, "
                  f"evaluating and saving the final model")

    # Only the chief writes to the run directory; where saving is collective the others
    # save too, into a temporary directory of their own.
    with _scratch_dir(chief, dist.process_index) as scratch, dist.peer_errors():
        own = [RunSeeds(config.seed), DivergenceGuard(config.learning_rate)]
        if chief:  # before the checkpoints: an epoch that can be resumed from has its row
            own.append(keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv"), append=True))
        if chief or dist.collective_saves:
            own += checkpoint_callbacks(run_dir, scratch_dir=scratch)
        if chief:
            if _has_tensorboard():
                own.append(keras.callbacks.TensorBoard(os.path.join(run_dir, "logs")))
            else:
                print("TensorBoard logs skipped: the tensorboard package is not installed")
        # Last among our own: an epoch counts as done once everything above is written.
        if chief or dist.collective_saves:
            own.append(RunBackup(os.path.join(scratch or run_dir, "backup", "process_0")))

        verbose = config.progress if config.progress == "auto" else int(config.progress)
        if done < config.epochs:
            model.fit(train_data, epochs=config.epochs, initial_epoch=done, steps_per_epoch=steps,
                      validation_data=test_data, callbacks=own + list(callbacks),
                      verbose=verbose if chief else 0, shuffle=False)  # tf.data shuffles already
        else:  # what fit() does after its last epoch: swap in the EMA weights (if any)
            with dist.scope():
                model.optimizer.finalize_variable_values(model.trainable_weights)
        _unshare_ema_arrays(model)
        kill_point("after_fit")

        # fit() has swapped in the EMA weights (if any): check, evaluate and save those.
        _check_finite_weights(model)
        results = model.evaluate(test_data, return_dict=True, verbose=0)
        if not np.isfinite(results["loss"]):
            raise TrainingDiverged(
                f"The trained model's test loss is {results['loss']}: no model.keras was written "
                f"and nothing was exported. Lower --learning-rate, in a new --run-dir.")
        top_k = top_k_of(train_source.num_classes)
        # "top5" keeps its name in results.json: the top-k accuracy, k = "top_k" (5, or fewer classes).
        results = {"top1": float(results["accuracy"]), "top5": float(results[f"top{top_k}"]),
                   "top_k": top_k,
                   "loss": float(results["loss"]), "test_examples": test_source.total_examples,
                   "epochs": config.epochs, "backend": keras.backend.backend(),
                   "strategy": dist.name, "replicas": dist.replicas,
                   "unreadable_count": len(unreadable), "unreadable_images": unreadable,
                   "seconds": round(time.time() - start, 1)}
        model_path = os.path.join(run_dir, "model.keras")
        if chief:
            models.save_keras_file(model, model_path)
        elif dist.collective_saves:  # every process takes part in saving
            models.save_keras_file(model, os.path.join(scratch, "model.keras"))
        kill_point("after_model_save")
        if chief:
            write_json(os.path.join(run_dir, "results.json"), results)
            deploy.write_labels(os.path.join(run_dir, "labels.txt"), train_source.class_names)
            if not plot_history(os.path.join(run_dir, "history.csv"), os.path.join(run_dir, "curves.png")):
                print("curves.png skipped: matplotlib is not installed (pip install 'keras-mixer[plots]')")
            print(f"final eval on {test_source.total_examples} test images: "
                  f"top-1 {results['top1']:.4f}, top-{top_k} {results['top5']:.4f}, loss {results['loss']:.4f} "
                  f"({results['backend']}, {dist.name} x{dist.replicas}, {results['seconds']} s); "
                  f"model: {model_path}")
        state = dict(state, stage="evaluated", results=results,
                     class_names=list(train_source.class_names))
        if chief:
            write_json(os.path.join(run_dir, STATE_FILE), state)
        kill_point("after_results")
        return _finish(config, state, chief, start, model)


def _export_once(config, state):
    """Export the run's model.keras; a version planned by a killed attempt is reused, so a
    re-run publishes no duplicate (a new version only when a finished run is re-exported)."""
    run_dir = config.run_dir
    base = os.path.abspath(os.path.join(config.export_dir, config.export_name))
    planned = state.get("export_planned") or {}
    if state["stage"] != "finished" and planned.get("base") == base:
        version = planned["version"]
        if os.path.isdir(os.path.join(base, str(version))):  # published (atomically) before a kill
            return os.path.join(config.export_dir, config.export_name, str(version))
    else:
        version = deploy.next_version(base)
        state["export_planned"] = {"base": base, "version": version}
        write_json(os.path.join(run_dir, STATE_FILE), state)
    path = export_model(os.path.join(run_dir, "model.keras"), config, state.get("class_names"),
                        version=version)
    kill_point("after_export")
    return path


def _finish(config, state, chief, start, model=None):
    """The steps after the evaluation: export (once), then mark the run finished."""
    run_dir = config.run_dir
    results = dict(state["results"])
    if chief:
        finished = state["stage"] == "finished"
        if finished and not config.re_export and (state.get("export") or not config.export):
            exported = f"; exported: {state['export']}" if state.get("export") else ""
            print(f"{run_dir} is finished ({results['epochs']} epochs): top-1 {results['top1']:.4f}, "
                  f"top-{results.get('top_k', 5)} {results['top5']:.4f}, loss {results['loss']:.4f}; model: "
                  f"{os.path.join(run_dir, 'model.keras')}{exported}. Nothing to do (--re-export "
                  f"exports it again; a new --run-dir trains again).")
        elif config.export:
            state["export"] = _export_once(config, state)
            print(f"exported: {state['export']}")
        state["stage"] = "finished"
        write_json(os.path.join(run_dir, STATE_FILE), state)
    if state.get("export"):
        results["export"] = state["export"]
    results["model"] = model if model is not None else models.load_keras_file(
        os.path.join(run_dir, "model.keras"), compile=False)
    return results


__all__ = [
    "FREE_SETTINGS", "KILL_AT_ENV", "NO_WEIGHT_DECAY", "RECIPES", "AdamW", "AtomicCheckpoint", "DivergenceGuard",
    "RunSeeds", "RunBackup", "RunError", "TrainConfig", "TrainingDiverged", "WarmupLinearDecay",
    "build_model", "build_optimizer", "check_settings", "checkpoint_callbacks", "compile_model",
    "initialize_from", "learning_rate_schedule", "open_run_dir", "plot_history", "read_history",
    "restore_training_state", "train", "trim_history", "write_json",
]
