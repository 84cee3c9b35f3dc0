"""Clients for a Mixer served by TF Serving: gRPC (``PredictionService``) and REST.

Both clients take images as arrays (``(H, W, 3)`` or ``(batch, H, W, 3)``,
uint8 or float pixels in 0-255; sent to the ``serving_default`` signature) or
as image files / encoded bytes (sent to the ``serving_bytes`` signature, which
decodes and resizes in the graph), and return one :class:`Prediction` per image.
:class:`GrpcClient`'s example serves an export and asks both clients.
"""

import base64
import dataclasses
import os
import re
import urllib.parse

import numpy as np

from keras_mixer.deploy.signatures import BYTES_INPUT, IMAGES_INPUT, SERVING_BYTES, SERVING_DEFAULT
from keras_mixer.files import check_name


# What TensorFlow appends to an op's error: the graph node and the traced function, e.g.
# "\n\t [[{{node map/while/decode_image/DecodeImage}}]] [Op:__inference_signature_wrapper_123]".
_GRAPH_CONTEXT = re.compile(r"\s*\[\[\{\{node [^}]*\}\}\]\]|\s*\[Op:[^\]]*\]")


def server_reason(details):
    """A server's reason for rejecting an input, without TensorFlow's graph context."""
    return _GRAPH_CONTEXT.sub("", str(details)).strip()


class ServingError(RuntimeError):
    """A request to the model server failed.

    The base class of the clients' errors: :class:`ServerUnavailableError`,
    :class:`ModelNotFoundError` and :class:`InvalidInputError`.

    Examples:
        >>> client = keras_mixer.RestClient("localhost:8501")
        >>> try:
        ...     client.predict(np.zeros((32, 32, 4)))     # 4 channels: refused before sending
        ... except keras_mixer.ServingError as error:
        ...     print(f"{type(error).__name__}: {error}")
        InvalidInputError: Images must have shape (H, W, 3) or (batch, H, W, 3), got (32, 32, 4).
    """


class ServerUnavailableError(ServingError):
    """The server cannot be reached or did not answer in time.

    Examples:
        >>> import socket
        >>> with socket.socket() as free:            # a port that nothing listens on
        ...     free.bind(("127.0.0.1", 0))
        ...     port = free.getsockname()[1]
        >>> client = keras_mixer.RestClient(f"127.0.0.1:{port}", timeout=5)
        >>> try:
        ...     client.predict(np.zeros((1, 32, 32, 3)))
        ... except keras_mixer.ServerUnavailableError as error:
        ...     print(str(error)[:50])
        REST server http://127.0.0.1:... unreachable: ...
    """


class ModelNotFoundError(ServingError):
    """The server does not serve this model / version / label.

    :class:`GrpcClient`'s example asks a server for a version it does not have.

    Examples:
        >>> issubclass(keras_mixer.ModelNotFoundError, keras_mixer.ServingError)
        True
        >>> def predict_or_none(client, images):
        ...     try:
        ...         return client.predict(images)
        ...     except keras_mixer.ModelNotFoundError as error:   # not deployed (yet)
        ...         print(error)
        ...         return None
    """


class InvalidInputError(ServingError, ValueError):
    """The request's inputs were rejected (by the client's checks or the server).

    Also a ``ValueError``. The client checks shapes and types before sending; the
    server refuses what its signatures cannot take (e.g. NaN pixels, an image
    of too many pixels) and the message gives its reason.

    Examples:
        >>> client = keras_mixer.GrpcClient("localhost:8500")
        >>> try:
        ...     client.predict(np.zeros((0, 32, 32, 3)))
        ... except ValueError as error:
        ...     print(f"{type(error).__name__}: {error}")
        InvalidInputError: Empty batch: give at least one image.
        >>> client.close()
    """


@dataclasses.dataclass
class Prediction:
    """Top-k result for one image: class indices, their scores and (when known) names.

    The clients' ``predict`` returns one per image, best class first.

    Args:
        classes: class indices, best first (``top_k`` of them).
        scores: their probabilities.
        labels: their class names, when the export has labels; else ``None``.

    Examples:
        >>> prediction = keras_mixer.Prediction(classes=[3, 5], scores=[0.7, 0.2],
        ...                                     labels=["cat", "dog"])
        >>> prediction.top()
        ('cat', 0.7)
        >>> keras_mixer.Prediction(classes=[3, 5], scores=[0.7, 0.2]).top()
        (3, 0.7)
    """

    classes: list
    scores: list
    labels: list = None

    def top(self):
        """``(label or class index, score)`` of the best class.

        Returns:
            ``(label, score)``, or ``(class index, score)`` without labels.

        Examples:
            >>> keras_mixer.Prediction([2, 0], [0.9, 0.1], ["fox", "cat"]).top()
            ('fox', 0.9)
        """
        return (self.labels[0] if self.labels else self.classes[0]), self.scores[0]


def prepare_inputs(images):
    """Map images to ``(signature_name, {input_name: array})``.

    ``images``: an array ``(H, W, 3)`` / ``(batch, H, W, 3)`` of 0-255 pixels, or
    a path / bytes / list of paths or bytes of encoded images.
    """
    if isinstance(images, (str, bytes, os.PathLike)):
        images = [images]
    if isinstance(images, (list, tuple)) and images and all(
            isinstance(item, (str, bytes, os.PathLike)) for item in images):
        return SERVING_BYTES, {BYTES_INPUT: np.array([_read_bytes(item) for item in images],
                                                       dtype=object)}
    try:
        array = np.asarray(images)
    except ValueError as error:
        raise InvalidInputError(f"Images must be a regular array: {error}") from None
    if array.ndim not in (3, 4) or array.shape[-1] != 3:
        raise InvalidInputError(
            f"Images must have shape (H, W, 3) or (batch, H, W, 3), got {array.shape}.")
    if array.ndim == 3:
        array = array[None]
    if array.shape[0] == 0:
        raise InvalidInputError("Empty batch: give at least one image.")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InvalidInputError(f"Images must be numeric pixels in 0-255, got dtype {array.dtype}.")
    return SERVING_DEFAULT, {IMAGES_INPUT: array.astype("float32")}


def _read_bytes(item):
    if isinstance(item, bytes):
        return item
    try:
        with open(item, "rb") as f:
            return f.read()
    except OSError as error:
        raise InvalidInputError(f"Cannot read image file {item!r}: {error}") from None


def to_predictions(outputs):
    """Turn a signature's output dict (arrays) into a list of :class:`Prediction`."""
    for key in ("top_k_classes", "top_k_scores"):
        if key not in outputs:
            raise ServingError(f"The served model returned no {key!r}; is it a keras_mixer export?")
    labels = outputs.get("top_k_labels")
    predictions = []
    for i, (classes, scores) in enumerate(zip(outputs["top_k_classes"], outputs["top_k_scores"])):
        names = None
        if labels is not None:
            names = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in labels[i]]
        predictions.append(Prediction([int(c) for c in classes], [float(s) for s in scores], names))
    return predictions


def check_address(address):
    """Return ``address`` (``host:port``, ``[v6]:port`` or ``http://host:port``) when its port,
    if it names one, is in 1-65535; else raise a ``ValueError`` (gRPC would dial
    ``localhost:99999`` as another port)."""
    if not isinstance(address, str) or not address:
        raise ValueError(f"Invalid server address {address!r}: expected host:port.")
    if address.startswith(("unix:", "dns:", "ipv4:", "ipv6:")):  # gRPC's other name schemes
        return address
    parts = urllib.parse.urlsplit(address if "://" in address else "//" + address)
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or (port is None and parts.netloc.endswith(":")):
        raise ValueError(f"Invalid server address {address!r}: the port must be a number in "
                         "1-65535.")
    return address


class _Client:
    def __init__(self, address, model="mixer", version=None, version_label=None, timeout=10.0):
        if version is not None and version_label is not None:
            raise ValueError("Give version or version_label, not both.")
        check_address(address)
        check_name(model)
        if version_label is not None:
            check_name(version_label, "version label")
        self.address = address
        self.model = model
        self.version = None if version is None else int(version)
        self.version_label = version_label
        self.timeout = timeout

    def predict(self, images):
        """Top-k predictions, one :class:`Prediction` per image."""
        signature, inputs = prepare_inputs(images)
        return to_predictions(self.predict_raw(inputs, signature))

    def predict_raw(self, inputs, signature=SERVING_DEFAULT):
        """Send ``inputs`` (``{name: array}``) as they are; return ``{output: array}``."""
        raise NotImplementedError

    def metadata(self):
        """``{signature: {"inputs": {name: (dtype, shape)}, "outputs": {...}}}``."""
        raise NotImplementedError


class GrpcClient(_Client):
    """TF Serving gRPC client (default port 8500): ``PredictionService`` ``Predict`` and ``GetModelMetadata``.

    ``predict(images)`` takes an array ``(H, W, 3)`` / ``(batch, H, W, 3)`` of 0-255
    pixels (sent to ``serving_default``) or image files / encoded bytes (sent to
    ``serving_bytes``) and returns one :class:`Prediction` per image;
    ``metadata()`` describes the signatures; ``predict_raw(inputs, signature)``
    sends arrays as they are. Close it (or use it in a ``with`` block).

    Args:
        address: ``host:port`` of the server's gRPC port.
        model: the served model's name (TF Serving's ``model_name``).
        version: ask this version (an integer) instead of the newest.
        version_label: ask the version with this label (TF Serving's model config).
        timeout: seconds to wait for each answer.

    Raises:
        ValueError: both ``version`` and ``version_label``, an address without a
            valid port, or a model name that is not one path component.

    Examples:
        A tiny model, exported and served by the development server (a stand-in
        for TF Serving) on free ports:

        >>> from keras_mixer.deploy.devserver import DevServer, ModelRepository
        >>> model = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3),
        ...                              num_classes=3)
        >>> folder = tempfile.mkdtemp()
        >>> model.save(os.path.join(folder, "tiny.keras"))
        >>> _ = keras_mixer.export_saved_model(os.path.join(folder, "tiny.keras"),
        ...                                    os.path.join(folder, "models"), name="mixer",
        ...                                    labels=["cat", "dog", "fox"], top_k=2)
        >>> server = DevServer(ModelRepository(os.path.join(folder, "models")),
        ...                    grpc_port=0, rest_port=0)
        >>> with keras_mixer.GrpcClient(server.grpc_address, model="mixer") as client:
        ...     predictions = client.predict(np.zeros((2, 32, 32, 3)))
        >>> len(predictions), predictions[0].labels, np.round(predictions[0].scores, 3)
        (2, ['cat', 'dog'], array([0.333, 0.333]))
        >>> keras_mixer.RestClient(server.rest_address).predict(np.zeros((32, 32, 3)))[0].classes
        [0, 1]
        >>> try:
        ...     keras_mixer.RestClient(server.rest_address, version=7).predict(np.zeros((32, 32, 3)))
        ... except keras_mixer.ModelNotFoundError as error:
        ...     print(error)
        REST server http://127.0.0.1:...: Servable not found for request: Specific(mixer, 7)
        >>> server.stop()
    """

    def __init__(self, address="localhost:8500", model="mixer", version=None, version_label=None,
                 timeout=10.0):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        super().__init__(address, model, version, version_label, timeout)
        self._channel = grpc.insecure_channel(address)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _model_spec(self, spec, signature=None):
        spec.name = self.model
        if self.version is not None:
            spec.version.value = self.version
        if self.version_label is not None:
            spec.version_label = self.version_label
        if signature is not None:
            spec.signature_name = signature

    def predict_raw(self, inputs, signature=SERVING_DEFAULT):
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, signature)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        response = self._call(self._stub.Predict, request)
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    def metadata(self):
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._model_spec(request.model_spec)
        response = self._call(self._stub.GetModelMetadata, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return _describe_signatures(signature_map.signature_def)

    def _call(self, method, request):
        import grpc

        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as error:
            code, details = error.code(), error.details()
            where = f"gRPC server {self.address}"
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise ServerUnavailableError(f"{where} unreachable ({code.name}): {details}") from None
            if code == grpc.StatusCode.NOT_FOUND:
                raise ModelNotFoundError(f"{where}: model {self._describe()} not found: {details}") from None
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidInputError(f"{where} rejected the input: {server_reason(details)}") from None
            raise ServingError(f"{where} failed ({code.name}): {details}") from None

    def _describe(self):
        suffix = (f" version {self.version}" if self.version is not None else
                  f" label {self.version_label!r}" if self.version_label else "")
        return repr(self.model) + suffix


class RestClient(_Client):
    """TF Serving REST client (default port 8501): ``POST /v1/models/NAME:predict``.

    The same methods as :class:`GrpcClient` (whose example serves a model and
    asks both clients); ``model_url()`` is the URL that the requests go to.

    Args:
        address: ``http://host:port`` (or ``host:port``) of the server's REST port.
        model: the served model's name (TF Serving's ``model_name``).
        version: ask this version (an integer) instead of the newest.
        version_label: ask the version with this label (TF Serving's model config).
        timeout: seconds to wait for each answer.

    Raises:
        ValueError: both ``version`` and ``version_label``, an address without a
            valid port, or a model name that is not one path component.

    Examples:
        >>> keras_mixer.RestClient("localhost:8501", model="mixer").model_url()
        'http://localhost:8501/v1/models/mixer'
        >>> keras_mixer.RestClient("http://serving:8501", version_label="stable").model_url()
        'http://serving:8501/v1/models/mixer/labels/stable'
    """

    def __init__(self, address="http://localhost:8501", model="mixer", version=None,
                 version_label=None, timeout=10.0):
        if "://" not in address:
            address = "http://" + address
        super().__init__(address.rstrip("/"), model, version, version_label, timeout)

    def model_url(self):
        url = f"{self.address}/v1/models/{self.model}"
        if self.version is not None:
            url += f"/versions/{self.version}"
        elif self.version_label is not None:
            url += f"/labels/{self.version_label}"
        return url

    def predict_raw(self, inputs, signature=SERVING_DEFAULT):
        instances = _to_instances(inputs)
        body = self._request("post", self.model_url() + ":predict",
                             json={"signature_name": signature, "instances": instances})
        predictions = body.get("predictions")
        if predictions is None:
            raise ServingError(f"REST server {self.address} answered without 'predictions': {body}")
        if predictions and not isinstance(predictions[0], dict):
            raise ServingError("The served model has a single output; expected a keras_mixer export.")
        keys = predictions[0].keys() if predictions else []
        return {key: np.array([row[key] for row in predictions]) for key in keys}

    def metadata(self):
        body = self._request("get", self.model_url() + "/metadata")
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        try:
            signature_map = json_format.ParseDict(body["metadata"]["signature_def"],
                                                  get_model_metadata_pb2.SignatureDefMap(),
                                                  ignore_unknown_fields=True)
        except (KeyError, TypeError, json_format.ParseError):
            raise ServingError(f"Unexpected metadata answer from {self.address}: {body}") from None
        return _describe_signatures(signature_map.signature_def)

    def _request(self, method, url, **kwargs):
        import requests

        try:
            response = getattr(requests, method)(url, timeout=self.timeout, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as error:
            raise ServerUnavailableError(f"REST server {self.address} unreachable: {error}") from None
        except requests.exceptions.InvalidJSONError as error:  # JSON has no NaN or Inf
            raise InvalidInputError(f"Cannot send the input as JSON (NaN or Inf pixels?): {error}") from None
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text[:500]}
        if response.status_code == 404:
            raise ModelNotFoundError(f"REST server {self.address}: {body.get('error', 'not found')}")
        if response.status_code in (400, 413):
            raise InvalidInputError(f"REST server {self.address} rejected the input: "
                                    f"{server_reason(body.get('error'))}")
        if response.status_code != 200:
            raise ServingError(f"REST server {self.address} answered {response.status_code}: "
                               f"{body.get('error', body)}")
        return body


def _to_instances(inputs):
    """Row-format JSON instances, named by input; bytes become ``{"b64": ...}``."""
    def jsonable(value):
        if isinstance(value, bytes):
            return {"b64": base64.b64encode(value).decode("ascii")}
        if isinstance(value, np.ndarray) and value.dtype == object:
            return [jsonable(v) for v in value]
        if isinstance(value, np.ndarray):
            return value.tolist()
        return value

    arrays = {name: np.asarray(value) for name, value in inputs.items()}
    sizes = {len(a) if a.ndim else 0 for a in arrays.values()}
    if len(sizes) != 1:
        raise InvalidInputError("All inputs need the same batch size for REST row format.")
    rows = range(sizes.pop())
    return [{name: jsonable(a[i]) for name, a in arrays.items()} for i in rows]


def _describe_signatures(signature_defs):
    import tensorflow as tf

    def describe(infos):
        return {key: (tf.as_dtype(info.dtype).name,
                      [d.size for d in info.tensor_shape.dim]) for key, info in infos.items()}

    return {name: {"inputs": describe(sig.inputs), "outputs": describe(sig.outputs)}
            for name, sig in signature_defs.items() if not name.startswith("__")}


def make_client(address, protocol="grpc", **kwargs):
    """A :class:`GrpcClient` or :class:`RestClient` for ``address``.

    Args:
        address: the server's address (``host:port``; ``http://`` optional for REST).
        protocol: ``"grpc"`` or ``"rest"``.
        **kwargs: the client's other arguments (``model``, ``version``,
            ``version_label``, ``timeout``).

    Returns:
        The client; no connection is made until its first request.

    Raises:
        ValueError: an unknown protocol, or arguments the client refuses.

    Examples:
        >>> client = keras_mixer.make_client("localhost:8501", protocol="rest", version=2)
        >>> type(client).__name__, client.model_url()
        ('RestClient', 'http://localhost:8501/v1/models/mixer/versions/2')
        >>> with keras_mixer.make_client("localhost:8500", model="mixer") as client:
        ...     type(client).__name__
        'GrpcClient'
    """
    if protocol == "grpc":
        return GrpcClient(address, **kwargs)
    if protocol == "rest":
        return RestClient(address, **kwargs)
    raise ValueError(f"protocol must be 'grpc' or 'rest', got {protocol!r}.")
