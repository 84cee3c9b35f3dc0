"""Distribution correctness: N steps on 2 replicas == N steps on 1 device, per backend.

Multi-process cases run as real processes over loopback, started the way the
README says (tensorflow: ``TF_CONFIG``; jax: ``KERAS_DISTRIBUTION_*``; torch: two
``torchrun`` "nodes").

Every case runs in fresh processes (device counts are fixed when a backend
starts). Both runs see the same global batches of fixed random images; the
final weights must agree to 1e-5. The recipe is finetune (SGD momentum,
global-norm clip 1): updates are linear in the gradient, so a wrongly scaled
or unsynchronised gradient shows (AdamW would hide a scale error and magnify
reduction-order noise on near-zero gradients).
"""

import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
from helpers import processes
from helpers.tiny import TINY

import keras

import keras_mixer
from keras_mixer import data, distribute, training

TOLERANCE = {"finetune": 1e-5}


def free_ports(n):
    """``n`` different free ports of 127.0.0.1 (as strings)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [str(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def worker_env(**extra):
    env = processes.worker_env(keras.backend.backend(), CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def run_workers(args, envs, timeout=300):
    return wait_all([processes.start_module("workers.training_worker", args, env,
                                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            text=True) for env in envs], timeout)


def wait_all(procs, timeout=300):
    """The outputs of ``procs``, which must succeed; whatever is left of them is killed."""
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            processes.kill_tree(p)
    for p, output in zip(procs, outputs):
        assert p.returncode == 0, output[-3000:]
    return outputs


def start_two_processes(argv, per_process=({}, {}), **env):
    """``python ARGV`` as 2 processes of one job over loopback, as the README starts them.

    tensorflow: ``TF_CONFIG`` naming 2 workers; jax: ``KERAS_DISTRIBUTION_*`` (one CPU device
    each); torch: ``torchrun --nnodes 2 --nproc-per-node 1 --node-rank i`` (two "nodes").
    ``argv``: ``-m module ...`` or a script; ``per_process``: each one's own variables.
    """
    backend = keras.backend.backend()
    ports = free_ports(2)
    procs = []
    for i in range(2):
        command, extra = [sys.executable, *argv], {}
        if backend == "tensorflow":
            extra["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                             "task": {"type": "worker", "index": i}})
        elif backend == "jax":
            extra = dict(KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{ports[0]}",
                         KERAS_DISTRIBUTION_NUM_PROCESSES="2",
                         KERAS_DISTRIBUTION_PROCESS_ID=str(i))
        else:
            command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                       "--nproc-per-node", "1", "--node-rank", str(i), "--master-addr",
                       "127.0.0.1", "--master-port", ports[0], *argv]
        procs.append(subprocess.Popen(command, env=worker_env(**extra, **env, **per_process[i]),
                                      cwd=processes.ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    return procs


def weights(path):
    with np.load(path, allow_pickle=False) as f:
        return [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]


@pytest.fixture(scope="module")
def single_device(tmp_path_factory):
    """Reference weights per recipe: the default strategy on one device."""
    cache = {}

    def get(recipe):
        if recipe not in cache:
            out = str(tmp_path_factory.mktemp("single") / "w.npz")
            output = run_workers(["default", "0", recipe, out], [worker_env()])[0]
            assert "decoded=48" in output, output[-500:]  # 24 images: checked, then read
            cache[recipe] = weights(out)
        return cache[recipe]

    return get


def assert_same_weights(got, expected, recipe):
    assert len(got) == len(expected)
    moved = max(float(np.abs(g).max()) for g in got)
    assert moved > 0
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, atol=TOLERANCE[recipe], rtol=0)


def only(*backends):
    return pytest.mark.skipif(keras.backend.backend() not in backends,
                              reason=f"needs backend {' or '.join(backends)}")


@only("tensorflow")
def test_tf_mirrored_two_cpus(tmp_path, single_device, recipe="finetune"):
    out = str(tmp_path / "w.npz")
    output = run_workers(["mirrored", "2", recipe, out], [worker_env()])[0]
    assert "done mirrored replicas=2" in output
    assert_same_weights(weights(out), single_device(recipe), recipe)


@only("jax")
def test_jax_data_parallel_two_devices(tmp_path, single_device, recipe="finetune"):
    out = str(tmp_path / "w.npz")
    env = worker_env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    output = run_workers(["data_parallel", "0", recipe, out], [env])[0]
    assert "done data_parallel replicas=2" in output
    assert_same_weights(weights(out), single_device(recipe), recipe)


@only("jax")
def test_jax_model_parallel_layout(tmp_path, single_device):
    """A 1 x 2 (batch, model) mesh: channel-mixing kernels sharded over 2 devices."""
    out = str(tmp_path / "w.npz")
    env = worker_env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    output = run_workers(["model_parallel", "0", "finetune", out, "2"], [env])[0]
    assert "done model_parallel replicas=1" in output
    assert_same_weights(weights(out), single_device("finetune"), "finetune")


@only("torch")
def test_torch_two_gloo_processes(tmp_path, single_device, recipe="finetune"):
    out = str(tmp_path / "w.npz")
    port, = free_ports(1)
    envs = [worker_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port) for r in range(2)]
    outputs = run_workers(["torch_ddp", "0", recipe, out], envs)
    assert "done torch_ddp replicas=2" in outputs[0]
    assert_same_weights(weights(out), single_device(recipe), recipe)


def test_two_processes_over_loopback(tmp_path, single_device, recipe="finetune"):
    """tensorflow: 2 TF_CONFIG workers; jax: 2 processes by KERAS_DISTRIBUTION_*; torch: 2
    torchrun nodes; == 1 device, each process decoding only its own share of the images."""
    out = str(tmp_path / "w.npz")
    strategy = {"tensorflow": "multi_worker", "jax": "data_parallel",
                "torch": "torch_ddp"}[keras.backend.backend()]
    outputs = wait_all(start_two_processes(
        ["-m", "workers.training_worker", strategy, "0", recipe, out]))
    assert all(f"done {strategy} replicas=2" in o for o in outputs), outputs[0][-2000:]
    assert_same_weights(weights(out), single_device(recipe), recipe)
    # Each process read and decoded only its own 12 of the 24 images: checked once, then
    # decoded once by its pipeline (one device decodes all 24 twice).
    assert [re.search(r"decoded=(\d+)", o).group(1) for o in outputs] == ["24", "24"], \
        [o[-500:] for o in outputs]


# What the surviving process says when its peer dies: one error line (keras_mixer.distribute
# PeerLost, quoting the engine's reason), or jax's own abort by its heartbeat check.
LOST = "error: process 0 of 2 lost contact with another process of the job"
PEER_LOST = {"tensorflow": LOST, "torch": LOST, "jax": "stopped sending heartbeats"}


def test_train_script_two_processes_killed_peer_and_resume(tmp_path):
    """The README command as 2 processes. Process 1 is SIGKILLed in epoch 2 of 3: process 0
    exits with an error (it does not hang: the communicate timeout fails the test).
    Re-running the same command on both resumes after epoch 1 and finishes all 3 epochs; the
    chief's results.json is a 1-device evaluation of its model.keras, and only the chief
    writes checkpoints and exports."""
    run_dir, export_dir = str(tmp_path / "run"), str(tmp_path / "export")
    argv = [os.path.join(processes.ROOT, "scripts", "train.py"), "--backend",
            keras.backend.backend(), "--image-size", "16", "--num-blocks", "1", "--epochs", "3",
            "--steps-per-epoch", "3", "--batch-size", "16", "--run-dir", run_dir,
            "--export-dir", export_dir, "--progress", "0"]
    timeout = {distribute.COLLECTIVE_TIMEOUT_ENV: "10"}
    procs = start_two_processes(argv, per_process=[{}, {training.KILL_AT_ENV: "mid_epoch@2"}],
                                **timeout)
    try:
        survivor = procs[0].communicate(timeout=240)[0]
        procs[1].communicate(timeout=60)
    finally:
        for p in procs:
            processes.kill_tree(p)
    assert procs[0].returncode not in (0, None), survivor[-3000:]
    assert PEER_LOST[keras.backend.backend()] in survivor, survivor[-3000:]
    assert not os.path.exists(os.path.join(run_dir, "results.json"))

    outputs = wait_all(start_two_processes(argv, **timeout))
    assert f"resuming {run_dir} from " in outputs[0], outputs[0][-3000:]
    assert "of 3 epochs done" in outputs[0], outputs[0][-3000:]
    assert [row["epoch"] for row in training.read_history(os.path.join(run_dir, "history.csv"))] \
        == [0, 1, 2]
    results = json.load(open(os.path.join(run_dir, "results.json")))
    assert results["replicas"] == 2 and results["test_examples"] == 359, results
    assert results["epochs"] == 3, results
    assert sum("final eval on 359" in o for o in outputs) == 1, outputs[0][-2000:]
    # Only the chief wrote: one export version, one backup, no temporary files (the other
    # process saved into a temporary directory of its own, where saving is collective).
    assert os.listdir(os.path.join(export_dir, "run")) == ["1"]
    names = {f for _, _, files in os.walk(run_dir) for f in files}
    assert not [f for f in names if ".tmp" in f], names
    assert os.listdir(os.path.join(run_dir, "backup")) == ["process_0"]
    assert {"model.keras", "last.keras", "best.keras", "history.csv"} <= names
    test = data.load_source("digits", "test")
    images, labels = next(iter(data.make_dataset(test, 359, 16, training=False)))
    model = keras.saving.load_model(os.path.join(run_dir, "model.keras"))
    probabilities = keras.ops.convert_to_numpy(model.predict(images.numpy(), verbose=0))
    true_loss = -np.mean(np.log(np.clip((probabilities * labels.numpy()).sum(-1), 1e-7, 1)))
    accuracy = np.mean(probabilities.argmax(-1) == labels.numpy().argmax(-1))
    np.testing.assert_allclose(results["loss"], true_loss, rtol=1e-4)
    np.testing.assert_allclose(results["top1"], accuracy, atol=1e-6)


def test_jax_layout_map_targets_channel_mixing_kernels():
    """The ModelParallel layout names real variable paths of the Mixer."""
    assert callable(distribute.mixer_layout_map)
    model = keras_mixer.MlpMixer(**TINY, input_shape=(32, 32, 3), num_classes=10)
    paths = [v.path for v in model.weights]
    for pattern in ("channel_mixing/dense_0/kernel", "channel_mixing/dense_0/bias",
                    "channel_mixing/dense_1/kernel"):
        hits = [p for p in paths if re.search(pattern, p)]
        assert len(hits) == TINY["num_blocks"], (pattern, paths)
