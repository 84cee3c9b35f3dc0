"""Shipping a Mixer: TF Serving SavedModels, TFLite and ONNX files, and clients for the server.

- :mod:`.signatures`: the serving interface (names, serving functions) shared by all of them;
- :mod:`.saved_model`, :mod:`.tflite`, :mod:`.onnx`: one exporter each;
- :mod:`.runner`: exports run under TensorFlow (a subprocess from JAX or PyTorch);
- :mod:`.client`: gRPC and REST clients.
"""

from keras_mixer.deploy.client import (
    GrpcClient,
    InvalidInputError,
    ModelNotFoundError,
    Prediction,
    RestClient,
    ServerUnavailableError,
    ServingError,
    make_client,
)
from keras_mixer.deploy.onnx import export_onnx
from keras_mixer.deploy.saved_model import (
    check_served_task,
    export_saved_model,
    labels_beside,
    next_version,
    read_labels,
    run_export_name,
    run_training_data,
    task_of,
    write_labels,
)
from keras_mixer.deploy.signatures import SERVING_BYTES, SERVING_DEFAULT
from keras_mixer.deploy.tflite import TFLITE_MODES, export_tflite
