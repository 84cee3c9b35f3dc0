"""Each extra of setup.cfg installs what its commands need, and the base install is the model.

Every command runs in a process that can import only what ``pip install
"keras-mixer[EXTRAS]"`` installs (helpers.extras blocks every other installed
distribution, in its child processes too): the model on the base install and a
backend, training with ``data``, SavedModels with ``export``, serving with ``serving``,
TFLite with ``mobile``, pictures with ``plots``, presets and hubs with ``hub``.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import extras
from helpers.processes import ROOT
from helpers.tiny import TINY

BACKEND_INDEPENDENT = True
SETUP_CFG = os.path.join(ROOT, "setup.cfg")
CLI = "import sys; from keras_mixer.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with a tiny trained-shape model (``tiny.keras``) and a few images."""
    import keras_mixer

    root = tmp_path_factory.mktemp("extras")
    model = keras_mixer.MlpMixer(**TINY, input_shape=(32, 32, 3), num_classes=3)
    model.save(str(root / "tiny.keras"))
    np.save(root / "images.npy", np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32"))
    return root


def run(extra_names, args, work, backend, code=CLI, timeout=600):
    env = extras.environment(SETUP_CFG, extra_names, str(work / f"site-{'-'.join(extra_names)}"),
                             base=dict(os.environ, KERAS_BACKEND=backend, KERAS_MIXER_COMMAND="1",
                                       PYTHONPATH=ROOT))
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=work, env=env, text=True,
                            capture_output=True, timeout=timeout)
    return result


def test_the_blocker_blocks_what_an_extra_does_not_install():
    blocked = extras.blocked_modules(SETUP_CFG, ["jax"])
    assert {"tensorflow", "matplotlib", "grpc", "tensorflow_datasets", "ai_edge_litert",
            "torch", "keras_hub"} <= set(blocked)
    assert not {"keras", "numpy", "jax", "safetensors", "h5py"} & set(blocked)
    assert "tensorflow" not in extras.blocked_modules(SETUP_CFG, ["data", "jax"])


def test_the_base_install_with_jax_builds_and_runs_the_model_and_lists_the_commands(work):
    code = ("import numpy as np, keras_mixer\n"
            "m = keras_mixer.MixerS32(input_shape=(32, 32, 3), num_classes=2)\n"
            "print(m.predict(np.zeros((1, 32, 32, 3)), verbose=0).shape)\n"
            "m.save('base.keras'); print(type(keras_mixer.load_model('base.keras')).__name__)")
    result = run(["jax"], [], work, "jax", code=code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["(1,", "2)", "MlpMixer"]
    result = run(["jax"], ["--help"], work, "jax")
    assert result.returncode == 0 and "serve" in result.stdout, result.stderr
    result = run(["jax"], ["serve", str(work)], work, "jax")  # the serving extra is missing
    assert result.returncode == 2
    assert "pip install 'keras-mixer[serving]'" in result.stderr, result.stderr


def test_data_trains_the_main_job_on_jax(work):
    result = run(["data", "jax"], ["train", "--epochs", "1", "--steps-per-epoch", "2",
                                   "--num-blocks", "1", "--run-dir", "run", "--no-export"],
                 work, "jax")
    assert result.returncode == 0, result.stderr
    assert os.path.isfile(work / "run" / "model.keras")
    assert "curves.png skipped" in result.stdout  # plots is another extra


def test_export_writes_a_saved_model(work):
    result = run(["export"], ["export", "saved-model", "tiny.keras", "--export-dir", "exported",
                              "--name", "tiny"], work, "tensorflow")
    assert result.returncode == 0, result.stderr
    assert os.path.isfile(work / "exported" / "tiny" / "1" / "saved_model.pb")


def test_mobile_writes_a_checked_tflite_file(work):
    result = run(["mobile"], ["export", "tflite", "tiny.keras", "--export-dir", "mobile",
                              "--name", "tiny", "--modes", "float32", "dynamic_int8"],
                 work, "tensorflow")
    assert result.returncode == 0, result.stderr
    assert os.path.isfile(work / "mobile" / "tiny.dynamic_int8.tflite")


def test_serving_serves_and_answers(work):
    test_export_writes_a_saved_model(work)
    code = ("import numpy as np\n"
            "from keras_mixer.deploy.devserver import DevServer, ModelRepository\n"
            "from keras_mixer.deploy.client import GrpcClient, RestClient\n"
            "with DevServer(ModelRepository('exported'), grpc_port=0, rest_port=0) as server:\n"
            "    images = np.load('images.npy')\n"
            "    for client in (GrpcClient(server.grpc_address, model='tiny'),\n"
            "                   RestClient(server.rest_address, model='tiny')):\n"
            "        print(len(client.predict(images)))\n")
    result = run(["serving"], [], work, "tensorflow", code=code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["4", "4"]


def test_plots_draws_the_token_mixing_weights(work):
    result = run(["plots", "jax"], ["visualize", "tokens", "tiny.keras", "--out", "tokens.png"],
                 work, "jax")
    assert result.returncode == 0, result.stderr
    assert os.path.getsize(work / "tokens.png") > 1000


def test_hub_saves_and_loads_a_preset_folder(work):
    code = ("import keras_mixer\n"
            "model = keras_mixer.load_model('tiny.keras')\n"
            "keras_mixer.save_to_preset(model, 'preset')\n"
            "print(keras_mixer.load_model('preset').config.num_classes)")
    result = run(["hub", "jax"], [], work, "jax", code=code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "3"
