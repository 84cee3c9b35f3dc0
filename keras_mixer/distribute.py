"""Data-parallel (and optional model-parallel) training on every Keras backend.

:func:`setup_distribution` picks, per backend:

- tensorflow: ``TPUStrategy`` on a TPU, ``MultiWorkerMirroredStrategy`` when
  ``TF_CONFIG`` names a cluster, ``MirroredStrategy`` over several GPUs (or
  logical CPUs, ``cpu_devices``), else the default strategy;
- jax: ``keras.distribution.DataParallel`` over all devices of all processes
  (multi-host through ``keras.distribution.initialize``, i.e.
  ``jax.distributed.initialize``, configured by the ``KERAS_DISTRIBUTION_*``
  environment variables), or ``ModelParallel`` sharding the wide channel-mixing
  kernels over a ``model`` mesh axis;
- torch: one process per device launched by ``torchrun``; gradients are
  averaged over processes (gloo on CPU, nccl on GPU) by hooks on every
  trainable parameter while ``model.fit`` runs unchanged.

Data: in a job of several processes each process reads and decodes only its own
shard of the data (:attr:`Distribution.shard`), and its pipeline makes its own part
of every global batch (``global batch / processes``) -- tensorflow multi-worker:
through ``distribute_datasets_from_function`` (:meth:`Distribution.distribute_dataset`);
jax: ``keras.distribution`` with ``auto_shard_dataset=False`` (Keras assembles the
global batch from each process's part); torch: each process trains on its own batches.
Without this, TensorFlow and JAX would have every process read and decode the whole
global batch and drop the others' parts. Evaluation is sharded the same way on
tensorflow and jax (:attr:`Distribution.eval_shard`); on torch every process
evaluates the whole test split (Keras does not combine metrics across torch processes).

A process whose peer dies does not wait forever. A peer whose process dies is noticed at
once where its connections are reset (TF: "Collective ops is aborted", torch: gloo's
"Connection reset|closed by peer"); ``$KERAS_MIXER_COLLECTIVE_TIMEOUT`` (seconds) bounds the
wait for a peer that stops answering -- tensorflow: each collective's timeout
(``CommunicationOptions(timeout_seconds=...)``, default none); torch: the process
group's timeout (``init_process_group(timeout=...)``, default 30 minutes); jax: the
distributed service's heartbeat timeout
(``jax.distributed.initialize(heartbeat_timeout_seconds=...)``, default 100 s), after
which the surviving processes are terminated with an error.

Must run before the model is built (and for TF's logical CPUs / JAX's
``XLA_FLAGS``, before the backend initialises its devices).
"""

import contextlib
import dataclasses
import datetime
import json
import os

import keras

from keras_mixer import compat

COLLECTIVE_TIMEOUT_ENV = "KERAS_MIXER_COLLECTIVE_TIMEOUT"
STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu", "data_parallel",
              "model_parallel", "torch_ddp")


# Lines of the engines' errors that say a peer process died or stopped answering.
PEER_LOST_SIGNS = ("Collective ops is aborted", "Connection reset by peer",
                   "Connection closed by peer", "DEADLINE_EXCEEDED", "Deadline Exceeded",
                   "Timed out", "timed out")


class PeerLost(RuntimeError):
    """Another process of a multi-process job died or stopped answering."""


@dataclasses.dataclass
class Distribution:
    """How one process takes part in training.

    ``replicas`` counts data-parallel replicas over all processes; ``shard``
    is ``(num_shards, index)`` of the training data this process reads itself (one
    shard per process, or per model replica of a model spanning processes), and
    ``eval_shard`` that of the test data.
    ``collective_saves``: saving a model is a collective operation (TF multi-worker,
    multi-process JAX: reading a variable's global array), so every process saves in
    step with the chief (the others into scratch files).
    """

    name: str
    replicas: int = 1
    process_index: int = 0
    process_count: int = 1
    shard: tuple = (1, 0)
    strategy: object = None
    collective_saves: bool = False
    eval_shard: tuple = (1, 0)

    @property
    def is_chief(self):
        return self.process_index == 0

    def scope(self):
        """Build and compile the model inside this scope."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def pipeline_batch_size(self, global_batch_size):
        """Batch size of the tf.data pipeline of this process."""
        num_shards = self.shard[0]
        if global_batch_size % max(self.replicas, num_shards):
            raise ValueError(
                f"Global batch size {global_batch_size} is not divisible by the "
                f"{max(self.replicas, num_shards)} data-parallel replicas."
            )
        return global_batch_size // num_shards

    def distribute_dataset(self, dataset, global_batch_size):
        """What ``model.fit`` / ``evaluate`` get from this process's pipeline (its own shard).

        TensorFlow multi-worker: a ``tf.distribute`` dataset whose batches are this
        worker's (``distribute_datasets_from_function``: no re-sharding, each local
        replica taking ``global_batch_size / replicas``); any other engine: ``dataset``.
        """
        if self.name != "multi_worker":
            return dataset
        per_replica = global_batch_size // self.replicas
        if per_replica != self.pipeline_batch_size(global_batch_size):
            dataset = dataset.rebatch(per_replica, drop_remainder=True)
        return self.strategy.distribute_datasets_from_function(lambda context: dataset)

    @contextlib.contextmanager
    def peer_errors(self):
        """Re-raise an engine's error about a dead or silent peer as :class:`PeerLost`."""
        try:
            yield
        except Exception as error:
            lines = [line.strip() for line in str(error).splitlines()
                     if any(sign in line for sign in PEER_LOST_SIGNS)]
            if self.process_count == 1 or not lines:
                raise
            raise PeerLost(
                f"process {self.process_index} of {self.process_count} lost contact with another "
                f"process of the job ({lines[0][:300]}). Re-run the same command on every host: "
                f"it resumes after the last whole epoch.") from error

    def prepare_model(self, model):
        """Torch: make every process start from rank 0's weights and average gradients."""
        if self.name == "torch_ddp":
            _torch_average_gradients(model, self.process_count)


def setup_distribution(strategy="auto", cpu_devices=0, model_parallel=0):
    """Create the distribution for this backend (see the module docstring).

    Args:
        strategy: one of :data:`STRATEGIES`; ``"auto"`` picks from the hardware
            and the environment (``TF_CONFIG``, ``KERAS_DISTRIBUTION_*``, torchrun's
            ``WORLD_SIZE``).
        cpu_devices: TF: split the CPU into this many logical devices (tests and
            demos of multi-device training without accelerators).
        model_parallel: JAX ``model_parallel``: size of the ``model`` mesh axis.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}.")
    backend = keras.backend.backend()
    if model_parallel > 1 and backend != "jax":
        raise ValueError(
            f"model_parallel (--model-parallel) {model_parallel} splits the model over JAX "
            f"devices; the {backend} backend trains data parallel only: leave it at 0, or use "
            "--backend jax.")
    setup = {"tensorflow": _tensorflow, "jax": _jax, "torch": _torch}.get(backend)
    if setup is None:
        raise ValueError(f"No distributed training for backend {backend!r}.")
    return setup(strategy, cpu_devices=cpu_devices, model_parallel=model_parallel)


def _unsupported(strategy, backend, supported):
    return ValueError(
        f"Strategy {strategy!r} is not available on the {backend} backend; "
        f"use one of {', '.join(supported)}."
    )


# --- tensorflow -------------------------------------------------------------------------------


def _tensorflow(strategy, cpu_devices=0, **_):
    import tensorflow as tf

    supported = ("auto", "default", "mirrored", "multi_worker", "tpu")
    if strategy not in supported:
        raise _unsupported(strategy, "tensorflow", supported)
    if cpu_devices > 1:
        cpus = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * cpu_devices
        )
    if strategy == "auto":
        if os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR"):
            strategy = "tpu"
        elif _tf_config_workers() > 1:
            strategy = "multi_worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1 or cpu_devices > 1:
            strategy = "mirrored"
        else:
            strategy = "default"

    if strategy == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        except ValueError as error:
            raise ValueError(
                f"--strategy tpu found no TPU ({error}): run on a TPU VM, or set TPU_NAME to the "
                "TPU's name or grpc:// address."
            ) from None
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        tf_strategy = tf.distribute.TPUStrategy(resolver)
        return Distribution("tpu", tf_strategy.num_replicas_in_sync, strategy=tf_strategy)
    if strategy == "multi_worker":
        workers = _tf_config_workers()
        if workers < 1:
            raise ValueError("Strategy 'multi_worker' needs TF_CONFIG naming the worker cluster.")
        timeout = collective_timeout()
        tf_strategy = tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(
                timeout_seconds=timeout))
        compat.patch_keras_for_multi_worker()
        task = json.loads(os.environ["TF_CONFIG"]).get("task", {})
        index = int(task.get("index", 0))
        return Distribution("multi_worker", tf_strategy.num_replicas_in_sync,
                            process_index=index, process_count=workers, shard=(workers, index),
                            eval_shard=(workers, index), strategy=tf_strategy,
                            collective_saves=True)
    if strategy == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        tf_strategy = tf.distribute.MirroredStrategy(devices)
        return Distribution("mirrored", tf_strategy.num_replicas_in_sync, strategy=tf_strategy)
    return Distribution("default", 1, strategy=tf.distribute.get_strategy())


def _tf_config_workers():
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    return len(config.get("cluster", {}).get("worker", []))


# --- jax --------------------------------------------------------------------------------------


def _jax(strategy, model_parallel=0, **_):
    import jax

    supported = ("auto", "default", "data_parallel", "model_parallel")
    if strategy not in supported:
        raise _unsupported(strategy, "jax", supported)
    if int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "1")) > 1:
        timeout = collective_timeout()
        if timeout is None:
            keras.distribution.initialize()  # jax.distributed.initialize from KERAS_DISTRIBUTION_*
        else:  # what keras.distribution.initialize does, with the heartbeat timeout
            jax.distributed.initialize(
                coordinator_address=os.environ["KERAS_DISTRIBUTION_JOB_ADDRESSES"].split(",")[0],
                num_processes=int(os.environ["KERAS_DISTRIBUTION_NUM_PROCESSES"]),
                process_id=int(os.environ["KERAS_DISTRIBUTION_PROCESS_ID"]),
                heartbeat_timeout_seconds=max(1, round(timeout)))
            compat.jax_initialize_rng()
    devices = jax.devices()
    if strategy == "auto":
        strategy = "model_parallel" if model_parallel > 1 else (
            "data_parallel" if len(devices) > 1 else "default")
    info = dict(process_index=jax.process_index(), process_count=jax.process_count(),
                collective_saves=jax.process_count() > 1)
    if strategy == "default":
        return Distribution("default", 1, **info)
    if strategy == "data_parallel":
        distribution = keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
        keras.distribution.set_distribution(distribution)
        shard = _jax_data_shard(distribution)
        return Distribution("data_parallel", len(devices), **info, shard=shard, eval_shard=shard,
                            strategy=None)
    model_size = model_parallel or 2
    if len(devices) % model_size:
        raise ValueError(
            f"model_parallel={model_size} does not divide the {len(devices)} JAX devices."
        )
    mesh = keras.distribution.DeviceMesh(
        (len(devices) // model_size, model_size), ("batch", "model"), devices
    )
    distribution = keras.distribution.ModelParallel(
        layout_map=mixer_layout_map(mesh), batch_dim_name="batch", auto_shard_dataset=False)
    keras.distribution.set_distribution(distribution)
    shard = _jax_data_shard(distribution)
    return Distribution("model_parallel", len(devices) // model_size, **info, shard=shard,
                        eval_shard=shard)


def _jax_data_shard(distribution):
    """``(num_shards, index)`` of the data this process feeds to a ``keras.distribution``.

    What Keras' own ``distribute_tf_dataset`` would keep of every global batch, read by
    this process alone: one shard per process, or per model replica when a replica
    spans processes (its processes feed the same data); one when there is one replica.
    """
    processes, replicas = distribution.num_processes, distribution.num_model_replicas
    if processes == 1 or replicas == 1:
        return 1, 0
    return min(processes, replicas), distribution.data_shard_id


def mixer_layout_map(mesh):
    """Shard the wide channel-mixing MLPs (``D_C = 4C``) over the ``model`` mesh axis.

    ``dense_0``'s kernel ``(C, D_C)`` is split by columns and ``dense_1``'s ``(D_C, C)``
    by rows (Megatron-style), so the hidden activations stay sharded.
    """
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map[r"channel_mixing/dense_0/kernel"] = (None, "model")
    layout_map[r"channel_mixing/dense_0/bias"] = ("model",)
    layout_map[r"channel_mixing/dense_1/kernel"] = ("model", None)
    return layout_map


# --- torch ------------------------------------------------------------------------------------


def _torch(strategy, **_):
    import torch
    import torch.distributed as dist

    supported = ("auto", "default", "torch_ddp")
    if strategy not in supported:
        raise _unsupported(strategy, "torch", supported)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if strategy == "default" or (strategy == "auto" and world_size == 1):
        return Distribution("default", 1)
    if world_size == 1:
        raise ValueError("Strategy 'torch_ddp' needs processes launched by torchrun (WORLD_SIZE).")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        timeout = collective_timeout()
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                timeout=None if timeout is None
                                else datetime.timedelta(seconds=timeout))
    rank = dist.get_rank()
    return Distribution("torch_ddp", world_size, process_index=rank, process_count=world_size,
                        shard=(world_size, rank))


def collective_timeout():
    """``$KERAS_MIXER_COLLECTIVE_TIMEOUT`` in seconds, ``None`` when unset (backend default)."""
    value = os.environ.get(COLLECTIVE_TIMEOUT_ENV, "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1
    if seconds <= 0:
        raise ValueError(f"{COLLECTIVE_TIMEOUT_ENV}={value!r}: give a positive number of seconds.")
    return seconds


def _torch_average_gradients(model, world_size):
    """Broadcast rank 0's weights; average each parameter's gradient over processes in backward."""
    import torch
    import torch.distributed as dist

    def average(grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad / world_size

    with torch.no_grad():
        for variable in model.weights:
            dist.broadcast(variable.value.data, src=0)
    for variable in model.trainable_weights:
        variable.value.register_hook(average)
