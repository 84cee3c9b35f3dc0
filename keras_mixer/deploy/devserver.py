"""A development server: a stand-in for TF Serving, for trying an export locally and for tests.

**Production uses TF Serving** (``tensorflow/serving``, see ``serving/``); this
server exists because its binary cannot be installed everywhere. It serves the
SavedModels under a base directory the way ``tensorflow_model_server`` does:
every integer version ``BASE/NAME/VERSION/`` is loaded with tag ``serve``
(versions that appear or disappear later are picked up on the next request),
the signature is picked by name (default ``serving_default``), inputs are
checked against the SignatureDef (names, dtype, rank / known dims), fed by
signature key, and the outputs returned by key. Failures map to gRPC status
codes (REST: 400 / 404) as TF Serving does, with TensorFlow's message (e.g.
"images contain NaN or Inf"), and the server keeps answering.

* gRPC: ``PredictionService.Predict`` and ``GetModelMetadata``;
* REST: ``POST /v1/models/NAME[/versions/N|/labels/L]:predict`` (row
  ``instances`` or columnar ``inputs``, ``{"b64": ...}`` for bytes) and
  ``GET .../metadata``.

It cannot be hung or exhausted by one client (:class:`ServerLimits`, each a
``keras-mixer serve`` flag): request bytes (REST ``Content-Length`` is checked
before reading, a gRPC tensor's declared shape before it is built), batch size,
pixels per image (an encoded image's header is read before decoding), a read
timeout per REST request, a fixed number of worker threads per front end (a
connection that sends nothing holds no thread) and the listen backlog. A
malformed request gets the status TF Serving uses (REST: its HTTP mapping; 408,
411 and 413 from the HTTP layer) and one sentence; the server keeps answering.

No batching, no model config file, no monitoring: ``keras-mixer serve`` for
local trials, :class:`DevServer` in tests.
"""

import base64
import concurrent.futures
import dataclasses
import errno
import http
import http.server
import json
import math
import os
import queue
import re
import select
import socket
import sys
import threading
import time

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from keras_mixer.deploy import saved_model
from keras_mixer.deploy.signatures import EMPTY_BATCH, MAX_IMAGE_PIXELS, SERVING_DEFAULT
from keras_mixer.files import NAME_PATTERN, NAME_RULE, check_name, format_bytes
from keras_mixer.images import encoded_size

# TF Serving's REST mapping of gRPC status codes (model_servers/http_server.cc).
HTTP_STATUS = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400,
               grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.NOT_FOUND: 404,
               grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
               grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.UNIMPLEMENTED: 501}
SAVED_MODEL_FILE = saved_model.SAVED_MODEL_FILE


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    """What one request or client may take from the development server.

    Attributes:
        max_request_bytes: largest request: a REST body (``Content-Length``), a
            gRPC message, and the data a gRPC tensor's declared shape needs.
        max_image_pixels: largest ``height * width`` of one image, an array's or
            the one an encoded image's header declares (checked before decoding).
        max_batch_size: most images in one request.
        read_timeout: seconds a REST connection may take to send its request;
            a connection that sends nothing holds no worker while it waits.
        workers: threads answering requests, per front end (gRPC, REST).
        listen_backlog: connections the REST socket queues before accepting them.

    Example:
        >>> ServerLimits(max_batch_size=32, read_timeout=10)
    """

    max_request_bytes: int = 32 * 2 ** 20
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_batch_size: int = 256
    read_timeout: float = 30.0
    workers: int = 8
    listen_backlog: int = 128

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            kind = (int, float) if field.type is float else int
            if isinstance(value, bool) or not isinstance(value, kind) \
                    or not math.isfinite(value) or value <= 0:
                what = "number" if field.type is float else "integer"
                raise ValueError(f"{field.name} (--{field.name.replace('_', '-')}) must be a "
                                 f"positive {what}, got {value!r}.")


class RequestError(Exception):
    """A request the server refuses, with its gRPC status code (``http_status``: REST's, when
    the HTTP layer refuses it before any gRPC status applies)."""

    def __init__(self, code, message, http_status=None):
        super().__init__(message)
        self.code = code
        self.http_status = http_status or HTTP_STATUS.get(code, 500)


def _invalid(message):
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def error_message(error):
    """TensorFlow's whole message for a failed signature call, without the boilerplate.

    Eager calls report ``Graph execution error:`` and where the failing node was
    defined before the message itself (``assertion failed: [empty batch: ...]``);
    TF Serving answers with the message and the node, which this keeps.
    """
    text = error.message if isinstance(error, tf.errors.OpError) else str(error)
    kept, in_trace = [], False
    for line in text.strip().splitlines():
        if line.startswith("Detected at node"):
            in_trace = True  # until the first line that is not part of the stack trace
        elif in_trace and (not line.strip() or line.startswith(" ") or line == "<stack traces unavailable>"):
            continue
        elif line.strip() and line.strip() != "Graph execution error:":
            in_trace = False
            kept.append(line)
    return "\n".join(kept) or type(error).__name__


class ModelRepository:
    """The integer versions under ``base_dir/NAME/``, loaded like TF Serving loads them.

    ``version_labels``: ``{name: {label: version}}`` (TF Serving's model config).
    ``limits``: a :class:`ServerLimits` (the front ends read theirs from here too).
    A folder whose name is not a model name (:func:`keras_mixer.files.check_name`)
    is reported once and not served.
    """

    def __init__(self, base_dir, version_labels=None, limits=None):
        if not os.path.isdir(base_dir):
            raise FileNotFoundError(f"Model base directory not found: {base_dir}")
        self.base_dir = base_dir
        self.version_labels = version_labels or {}
        self.limits = limits or ServerLimits()
        self.models = {}
        self._failed = set()
        self._lock = threading.Lock()
        self.refresh(strict=True)
        if not self.models:
            raise ValueError(
                f"No SavedModels under {base_dir}: expected {base_dir}/NAME/VERSION/{SAVED_MODEL_FILE} "
                "(written by `keras-mixer export saved-model`).")

    def _scan(self):
        """``{name: {version: path}}`` of the complete versions on disk (dot-names are temporary)."""
        found = {}
        for name in sorted(os.listdir(self.base_dir)):
            model_dir = os.path.join(self.base_dir, name)
            if name.startswith(".") or not os.path.isdir(model_dir):
                continue
            try:
                check_name(name)
            except ValueError as error:
                if model_dir not in self._failed:
                    self._failed.add(model_dir)
                    print(f"Skipped {model_dir}: {error}", file=sys.stderr)
                continue
            versions = {int(v): os.path.join(model_dir, v) for v in os.listdir(model_dir)
                        if v.isdigit() and os.path.isfile(os.path.join(model_dir, v, SAVED_MODEL_FILE))}
            if versions:
                found[name] = versions
        return found

    def refresh(self, strict=False):
        """Load versions that appeared since the last call, forget those that were removed.

        A version that fails to load raises with ``strict``, else is reported once and skipped.
        """
        with self._lock:
            models = {}
            for name, versions in self._scan().items():
                before, loaded = self.models.get(name, {}), {}
                for version, path in sorted(versions.items()):
                    if version in before:
                        loaded[version] = before[version]
                    elif path not in self._failed:
                        try:
                            loaded[version] = self._load(path)
                        except Exception as error:  # a broken SavedModel: report it, serve the others
                            if strict:
                                raise ValueError(f"Cannot load the SavedModel {path}: {error}") from error
                            self._failed.add(path)
                            print(f"Skipped {path}: cannot load it: {error}", file=sys.stderr)
                if loaded:
                    models[name] = loaded
            self.models = models  # replaced whole: requests in flight keep the dict they read

    def describe(self):
        """``"mixer (versions 1, 2), other (version 3)"``."""
        return ", ".join(
            f"{name} (version{'s' if len(v) > 1 else ''} {', '.join(map(str, sorted(v)))})"
            for name, v in sorted(self.models.items()))

    @staticmethod
    def _load(path):
        return saved_model.load_saved_model(path)

    def resolve(self, spec_name, version=None, label=None):
        """``(version, (loaded SavedModel, signature defs))`` of a request's model spec."""
        self.refresh()
        models = self.models
        if spec_name not in models and not NAME_PATTERN.fullmatch(spec_name):
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: "
                                                          f"Latest({spec_name}): a model name is {NAME_RULE}")
        if spec_name not in models:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({spec_name})")
        versions = models[spec_name]
        if label:
            if label not in self.version_labels.get(spec_name, {}):
                raise RequestError(grpc.StatusCode.NOT_FOUND, f"Unknown version label {label!r} of {spec_name}")
            version = self.version_labels[spec_name][label]
        if version is None:
            version = max(versions)
        if version not in versions:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Specific({spec_name}, {version})")
        return version, versions[version]

    def signature(self, name, version, label, signature_name):
        """``(version, loaded SavedModel, signature name, SignatureDef)`` of a request."""
        if signature_name is not None and not isinstance(signature_name, str):
            raise _invalid(f"'signature_name' must be a string, got {type(signature_name).__name__}")
        version, (loaded, signature_defs) = self.resolve(name, version, label)
        signature_name = signature_name or SERVING_DEFAULT
        if signature_name not in signature_defs or signature_name.startswith("__"):
            raise _invalid(f"Serving signature name: \"{signature_name}\" not found in signature def")
        return version, loaded, signature_name, signature_defs[signature_name]

    def predict(self, name, version, label, signature_name, inputs, output_filter=()):
        """``(version, {output: array})``: ``inputs`` checked against the signature and the
        limits, then run; ``output_filter`` keeps those outputs (default all)."""
        version, loaded, signature_name, signature_def = self.signature(
            name, version, label, signature_name)
        check_output_filter(output_filter, signature_def)
        expected = set(signature_def.inputs)
        if set(inputs) != expected:
            raise _invalid(f"input keys {sorted(inputs)} do not match the signature's {sorted(expected)}")
        if any(value.ndim and value.shape[0] == 0 for value in inputs.values()):
            raise _invalid(EMPTY_BATCH)
        dtypes = {}
        for key, value in inputs.items():
            info = signature_def.inputs[key]
            want = dtypes[key] = tf.as_dtype(info.dtype)
            got = tf.string if value.dtype.kind in "OSU" else tf.as_dtype(value.dtype)
            if got != want:
                raise _invalid(f"Expects arg[{key}] to be {want.name} but {got.name} is provided")
            dims = [d.size for d in info.tensor_shape.dim]
            if not info.tensor_shape.unknown_rank and (
                    len(dims) != value.ndim or any(d not in (-1, n) for d, n in zip(dims, value.shape))):
                raise _invalid(f"input {key} has shape {list(value.shape)}, signature expects {dims}")
        check_limits(inputs, self.limits)
        feeds = {key: tf.constant(value, dtype=dtypes[key]) for key, value in inputs.items()}
        try:
            outputs = loaded.signatures[signature_name](**feeds)
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as error:
            raise _invalid(error_message(error)) from None
        return version, {key: value.numpy() for key, value in outputs.items()
                         if not output_filter or key in output_filter}

    def metadata(self, name, version=None, label=None):
        version, (_, signature_defs) = self.resolve(name, version, label)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature_def in signature_defs.items():
            signature_map.signature_def[key].CopyFrom(signature_def)
        return version, signature_map


def check_output_filter(output_filter, signature_def):
    """TF Serving's refusal of an ``output_filter`` naming an unknown or repeated output."""
    seen = set()
    for alias in output_filter:
        if alias not in signature_def.outputs:
            raise _invalid(f"output tensor alias not found in signature: {alias} Outputs expected "
                           f"to be in the set {{{','.join(sorted(signature_def.outputs))}}}.")
        if alias in seen:
            raise _invalid(f"duplicate output tensor alias: {alias}")
        seen.add(alias)


def _batch_and_pixels(key, shape, limits):
    """Refuse an input whose batch (first dimension) or images (``(batch, H, W, C)``) are too large."""
    if len(shape) >= 1 and shape[0] == 0:
        raise _invalid(EMPTY_BATCH)
    if len(shape) >= 1 and shape[0] > limits.max_batch_size:
        raise _invalid(f"input {key} holds a batch of {shape[0]}, more than the server's limit of "
                       f"{limits.max_batch_size} (--max-batch-size): send fewer per request")
    if len(shape) == 4 and shape[1] * shape[2] > limits.max_image_pixels:
        raise _invalid(f"input {key} holds images of {shape[1]}x{shape[2]} pixels, more than the "
                       f"server's limit of {limits.max_image_pixels} per image (--max-image-pixels)")


@tf.function(input_signature=[tf.TensorSpec((None,), tf.string)])
def _encoded_sizes(batch):
    return tf.map_fn(encoded_size, batch, fn_output_signature=tf.TensorSpec((2,), tf.int64))


def check_limits(inputs, limits):
    """Refuse inputs over ``limits``: batch size, pixels per image, and for encoded images
    (string inputs) the size each one's header declares, read before anything is decoded."""
    for key, value in inputs.items():
        _batch_and_pixels(key, value.shape, limits)
        if value.dtype != object or value.ndim != 1:
            continue
        try:
            sizes = _encoded_sizes(tf.constant(value, tf.string)).numpy()
        except tf.errors.InvalidArgumentError as error:
            raise _invalid(f"input {key}: {error_message(error)}") from None
        for index, (height, width) in enumerate(sizes):
            if height * width > limits.max_image_pixels:
                raise _invalid(f"image {index} of input {key} is {height}x{width} pixels, more than "
                               f"the server's limit of {limits.max_image_pixels} per image "
                               "(--max-image-pixels); it was not decoded")


def check_declared_tensor(key, proto, limits):
    """Refuse a gRPC ``TensorProto`` from its declared shape, before it is built: a negative
    dimension, a batch or images over ``limits``, or more data than a request may carry."""
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise _invalid(f"input {key} declares shape {dims}: a tensor's dimensions must be >= 0")
    _batch_and_pixels(key, dims, limits)
    if proto.dtype != tf.string.as_datatype_enum:
        try:
            itemsize = tf.as_dtype(proto.dtype).size
        except TypeError:
            raise _invalid(f"input {key} has an unknown dtype ({proto.dtype})") from None
        declared = math.prod(dims) * itemsize
        if declared > limits.max_request_bytes:
            raise _invalid(f"input {key} declares shape {dims} ({format_bytes(declared)} of "
                           f"{tf.as_dtype(proto.dtype).name}), more than the server's limit of "
                           f"{format_bytes(limits.max_request_bytes)} per request (--max-request-bytes)")


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, repository):
        self.repository = repository

    @staticmethod
    def _version(spec):
        return spec.version.value if spec.HasField("version") else None

    def Predict(self, request, context):
        spec = request.model_spec
        try:
            for key, proto in request.inputs.items():
                check_declared_tensor(key, proto, self.repository.limits)
            try:
                inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
            except Exception as error:  # malformed TensorProto
                raise _invalid(f"Malformed input tensor: {error}") from None
            version, outputs = self.repository.predict(
                spec.name, self._version(spec), spec.version_label, spec.signature_name, inputs,
                list(request.output_filter))
        except RequestError as error:
            context.abort(error.code, str(error))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = version
        response.model_spec.signature_name = spec.signature_name or SERVING_DEFAULT
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response

    def GetModelMetadata(self, request, context):
        spec = request.model_spec
        if list(request.metadata_field) != ["signature_def"]:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "metadata_field must be ['signature_def']")
        try:
            version, signature_map = self.repository.metadata(
                spec.name, self._version(spec), spec.version_label)
        except RequestError as error:
            context.abort(error.code, str(error))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = version
        response.metadata["signature_def"].Pack(signature_map)
        return response


def _address(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def start_grpc(repository, host="127.0.0.1", port=0):
    """Start the gRPC front end (port 0: any free port); returns ``(server, "HOST:PORT")``.

    ``repository.limits.workers`` threads answer; a message over
    ``limits.max_request_bytes`` is refused by gRPC itself (``RESOURCE_EXHAUSTED``).
    """
    limits = repository.limits
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=limits.workers,
                                              thread_name_prefix="keras-mixer-grpc"),
        # One server per port (Linux gRPC shares ports by default); requests up to the limit
        # rather than gRPC's 4 MB (a batch of 224 x 224 float images is 0.6 MB per image).
        options=[("grpc.so_reuseport", 0),
                 ("grpc.max_receive_message_length", min(limits.max_request_bytes, 2 ** 31 - 1)),
                 ("grpc.max_send_message_length", -1)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(repository), server)
    try:
        bound = server.add_insecure_port(_address(host, port))
    except RuntimeError:  # grpcio >= 1.60 raises where older versions returned 0
        bound = 0
    if not bound:
        raise OSError(errno.EADDRINUSE, f"cannot listen on {_address(host, port)} (gRPC): "
                                        "the port is in use or the address is not this machine's")
    server.start()
    return server, _address(host, bound)


_ROUTE = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?(:predict|/metadata)$")


def _from_json(value):
    """JSON values -> nested lists, with ``{"b64": ...}`` decoded to bytes."""
    if isinstance(value, dict):
        if set(value) != {"b64"}:
            raise _invalid(f"unexpected object in input: {sorted(value)}")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (ValueError, TypeError):
            raise _invalid("invalid base64 in {'b64': ...}") from None
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def _to_array(value, dtype):
    if dtype == tf.string:
        array = np.empty(len(value), dtype=object) if isinstance(value, list) else None
        if array is None or any(isinstance(v, list) for v in value):
            raise _invalid("string inputs must be a list of strings")
        array[:] = [v.encode() if isinstance(v, str) else v for v in value]
        if any(not isinstance(v, bytes) for v in array):
            raise _invalid("string input holds a non-string value")
        return array
    try:
        array = np.array(value)
    except ValueError as error:
        raise _invalid(f"ragged input: {error}") from None
    if array.dtype.kind not in "iufb":
        raise _invalid(f"input must be numeric ({dtype.name}), got JSON values of type {array.dtype}")
    return array.astype(dtype.as_numpy_dtype)


def _to_json(array):
    if array.dtype == object:
        return [_to_json(v) if isinstance(v, np.ndarray) else v.decode("utf-8") for v in array]
    return array.tolist()


class _RestHandler(http.server.BaseHTTPRequestHandler):
    repository = None

    def log_message(self, *args):  # no access log
        pass

    def _reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _refuse(self, error):
        self._reply(error.http_status, {"error": str(error)})
        if error.http_status in (408, 411, 413):  # the body was not read: end the connection
            self.close_connection = True
            self._discard_rest()

    def _discard_rest(self, seconds=2.0, chunk=1 << 16):
        """After refusing an unread body: read and drop what the client still sends, for a short
        while, so that it reads the answer instead of a reset connection (a lingering close)."""
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + seconds
            while (remaining := deadline - time.monotonic()) > 0:
                self.connection.settimeout(remaining)
                if not self.connection.recv(chunk):
                    break
        except OSError:
            pass

    def _route(self, action):
        match = _ROUTE.match(self.path)
        if not match or match.group(4) != action:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"Malformed request: {self.command} {self.path}")
        name, version, label, _ = match.groups()
        return name, None if version is None else int(version), label

    def _body(self):
        """The request body, after checking its ``Content-Length`` against the limits; read
        within ``read_timeout`` seconds in all."""
        limits = self.repository.limits
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "send the body with a "
                               "Content-Length header (chunked bodies are not read here)", 411)
        text = self.headers.get("Content-Length")
        if text is None:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               "a POST request needs a Content-Length header", 411)
        if not text.strip().isdigit():
            raise _invalid(f"Content-Length must be a whole number of bytes, got {text!r}")
        length = int(text)
        if length > limits.max_request_bytes:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, (
                f"request body of {format_bytes(length)} is larger than the server's limit of "
                f"{format_bytes(limits.max_request_bytes)} (--max-request-bytes); it was not read"), 413)
        deadline = time.monotonic() + limits.read_timeout
        chunks, received = [], 0
        while received < length:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                self.connection.settimeout(remaining)
                chunk = self.rfile.read1(min(length - received, 1 << 20))
            except TimeoutError:
                raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, (
                    f"the request body did not arrive: {received} of {length} bytes "
                    f"(Content-Length) in {limits.read_timeout:g} s (--read-timeout)"), 408) from None
            if not chunk:
                raise _invalid(f"the request body ended after {received} of {length} bytes "
                               "(Content-Length)")
            chunks.append(chunk)
            received += len(chunk)
        self.connection.settimeout(limits.read_timeout)
        return b"".join(chunks)

    def do_GET(self):
        try:
            name, version, label = self._route("/metadata")
            version, signature_map = self.repository.metadata(name, version, label)
            self._reply(200, {"model_spec": {"name": name, "version": str(version)},
                              "metadata": {"signature_def": json_format.MessageToDict(signature_map)}})
        except RequestError as error:
            self._refuse(error)

    def do_POST(self):
        try:
            name, version, label = self._route(":predict")
            data = self._body()
            try:
                body = json.loads(data)
            except ValueError as error:
                raise _invalid(f"JSON parse error: {error}") from None
            except RecursionError:
                raise _invalid("JSON parse error: the request nests too deeply") from None
            if not isinstance(body, dict):
                raise _invalid("request body must be a JSON object")
            _, _, signature_name, signature_def = self.repository.signature(
                name, version, label, body.get("signature_name"))
            try:
                inputs, columnar = self._inputs(body, signature_def.inputs)
            except (RecursionError, ValueError, TypeError) as error:
                reason = "it nests too deeply" if isinstance(error, RecursionError) else error
                raise _invalid(f"cannot read the inputs: {reason}") from None
            version, outputs = self.repository.predict(name, version, label, signature_name, inputs)
        except RequestError as error:
            self._refuse(error)
            return
        if columnar:
            self._reply(200, {"outputs": {key: _to_json(v) for key, v in outputs.items()}})
            return
        batch = len(next(iter(outputs.values())))
        self._reply(200, {"predictions": [{key: _to_json(v[i:i + 1])[0] for key, v in outputs.items()}
                                          for i in range(batch)]})

    @staticmethod
    def _inputs(body, infos):
        if ("instances" in body) == ("inputs" in body):
            raise _invalid("request needs exactly one of 'instances' or 'inputs'")
        dtypes = {key: tf.as_dtype(info.dtype) for key, info in infos.items()}
        if "inputs" in body:
            value = _from_json(body["inputs"]) if not isinstance(body["inputs"], dict) or set(
                body["inputs"]) == {"b64"} else {k: _from_json(v) for k, v in body["inputs"].items()}
            named = value if isinstance(value, dict) else {next(iter(dtypes)): value}
            columnar = True
        else:
            rows = body["instances"]
            if not isinstance(rows, list):
                raise _invalid("'instances' must be a list")
            if not rows:
                raise _invalid(EMPTY_BATCH)
            named_rows = all(isinstance(row, dict) and set(row) != {"b64"} for row in rows)
            if named_rows:
                keys = {key for row in rows for key in row}
                named = {key: [_from_json(row.get(key)) for row in rows] for key in keys}
            elif len(dtypes) == 1:
                named = {next(iter(dtypes)): [_from_json(row) for row in rows]}
            else:
                raise _invalid("with several inputs each instance must be an object")
            columnar = False
        return {key: _to_array(value, dtypes[key]) if key in dtypes else np.asarray(value)
                for key, value in named.items()}, columnar


class _RestServer(http.server.HTTPServer):
    """An HTTP server with ``limits.workers`` threads: a connection is handed to one only once
    its first bytes arrive (or answered 408 after ``limits.read_timeout`` seconds of silence,
    counted from its connecting, so those queued behind others age meanwhile)."""

    def __init__(self, address, handler, limits):
        self.limits = limits
        self.request_queue_size = limits.listen_backlog  # read by listen() in server_activate
        super().__init__(address, handler)
        self._connections = queue.SimpleQueue()
        for index in range(limits.workers):  # daemon threads: a stuck client never delays exit
            threading.Thread(target=self._work, name=f"keras-mixer-rest-{index}", daemon=True).start()

    def process_request(self, request, client_address):
        self._connections.put((request, client_address, time.monotonic()))

    def _work(self):
        while (item := self._connections.get()) is not None:
            self._serve(*item)

    def _serve(self, request, client_address, accepted):
        try:
            remaining = accepted + self.limits.read_timeout - time.monotonic()
            poller = select.poll()
            poller.register(request, select.POLLIN)
            if poller.poll(max(remaining, 0) * 1000):  # what arrived while it queued counts
                self.finish_request(request, client_address)
            else:
                request.sendall(_timeout_response(self.limits.read_timeout))
        except OSError:
            pass  # the client went away
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def server_close(self):
        super().server_close()
        for _ in range(self.limits.workers):
            self._connections.put(None)


def _timeout_response(read_timeout):
    body = json.dumps({"error": f"no request arrived within {read_timeout:g} s (--read-timeout)"})
    return (f"HTTP/1.0 408 {http.HTTPStatus(408).phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}").encode()


def start_rest(repository, host="127.0.0.1", port=0):
    """Start the REST front end (port 0: any free port); returns ``(server, "http://HOST:PORT")``.

    Bounded by ``repository.limits`` (:class:`ServerLimits`): workers, read timeout,
    listen backlog, request bytes.
    """
    limits = repository.limits
    handler = type("Handler", (_RestHandler,), {"repository": repository,
                                                "timeout": limits.read_timeout})
    try:
        server = _RestServer((host, port), handler, limits)
    except OSError as error:
        raise OSError(error.errno, f"cannot listen on {_address(host, port)} (REST): "
                                   f"{error.strerror}") from None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{_address(host, server.server_address[1])}"


class DevServer:
    """Both front ends over one :class:`ModelRepository`; ``stop()`` or leave the ``with`` block.

    >>> with DevServer(ModelRepository("saved_models"), grpc_port=0, rest_port=0) as server:
    ...     GrpcClient(server.grpc_address).predict(["cat.jpg"])
    """

    def __init__(self, repository, host="127.0.0.1", grpc_port=8500, rest_port=8501):
        self.repository = repository
        self._grpc, self.grpc_address = start_grpc(repository, host, grpc_port)
        try:
            self._rest, self.rest_address = start_rest(repository, host, rest_port)
        except BaseException:
            self._grpc.stop(None)
            raise

    def stop(self):
        self._grpc.stop(None)
        self._rest.shutdown()
        self._rest.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
