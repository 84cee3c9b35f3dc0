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

No batching, no model config file, no monitoring: ``keras-mixer serve`` for
local trials, :class:`DevServer` in tests.
"""

import base64
import concurrent.futures
import errno
import http.server
import json
import os
import re
import sys
import threading

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from keras_mixer.deploy.signatures import SERVING_DEFAULT

HTTP_STATUS = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404}
SAVED_MODEL_FILE = "saved_model.pb"


class RequestError(Exception):
    """A request the server refuses, with its gRPC status code."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


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
    """

    def __init__(self, base_dir, version_labels=None):
        if not os.path.isdir(base_dir):
            raise FileNotFoundError(f"Model base directory not found: {base_dir}")
        self.base_dir = base_dir
        self.version_labels = version_labels or {}
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
        proto = saved_model_pb2.SavedModel()
        with open(os.path.join(path, SAVED_MODEL_FILE), "rb") as f:
            proto.ParseFromString(f.read())
        (meta_graph,) = [m for m in proto.meta_graphs if "serve" in m.meta_info_def.tags]
        return tf.saved_model.load(path, tags=["serve"]), meta_graph.signature_def

    def resolve(self, spec_name, version=None, label=None):
        """``(version, (loaded SavedModel, signature defs))`` of a request's model spec."""
        self.refresh()
        models = self.models
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

    def predict(self, name, version, label, signature_name, inputs):
        version, (loaded, signature_defs) = self.resolve(name, version, label)
        signature_name = signature_name or SERVING_DEFAULT
        if signature_name not in signature_defs or signature_name.startswith("__"):
            raise _invalid(f"Serving signature name: \"{signature_name}\" not found in signature def")
        signature_def = signature_defs[signature_name]
        expected = set(signature_def.inputs)
        if set(inputs) != expected:
            raise _invalid(f"input keys {sorted(inputs)} do not match the signature's {sorted(expected)}")
        feeds = {}
        for key, value in inputs.items():
            info = signature_def.inputs[key]
            want = tf.as_dtype(info.dtype)
            got = tf.string if value.dtype.kind in "OSU" else tf.as_dtype(value.dtype)
            if got != want:
                raise _invalid(f"Expects arg[{key}] to be {want.name} but {got.name} is provided")
            dims = [d.size for d in info.tensor_shape.dim]
            if not info.tensor_shape.unknown_rank and (
                    len(dims) != value.ndim or any(d not in (-1, n) for d, n in zip(dims, value.shape))):
                raise _invalid(f"input {key} has shape {list(value.shape)}, signature expects {dims}")
            feeds[key] = tf.constant(value, dtype=want)
        try:
            outputs = loaded.signatures[signature_name](**feeds)
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as error:
            raise _invalid(error_message(error)) from None
        return version, {key: value.numpy() for key, value in outputs.items()}

    def metadata(self, name, version=None, label=None):
        version, (_, signature_defs) = self.resolve(name, version, label)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature_def in signature_defs.items():
            signature_map.signature_def[key].CopyFrom(signature_def)
        return version, signature_map


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, repository):
        self.repository = repository

    @staticmethod
    def _version(spec):
        return spec.version.value if spec.HasField("version") else None

    def Predict(self, request, context):
        spec = request.model_spec
        try:
            try:
                inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
            except Exception as error:  # malformed TensorProto
                raise _invalid(f"Malformed input tensor: {error}") from None
            version, outputs = self.repository.predict(
                spec.name, self._version(spec), spec.version_label, spec.signature_name, inputs)
        except RequestError as error:
            context.abort(error.code, str(error))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = version
        response.model_spec.signature_name = spec.signature_name or SERVING_DEFAULT
        for key, value in outputs.items():
            if not request.output_filter or key in request.output_filter:
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


def start_grpc(repository, host="127.0.0.1", port=0, max_workers=8):
    """Start the gRPC front end (port 0: any free port); returns ``(server, "HOST:PORT")``."""
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=max_workers),
        # One server per port (Linux gRPC shares ports by default), and no 4 MB request cap
        # (TF Serving lifts it too: a batch of 224 x 224 float images is 0.6 MB per image).
        options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", -1),
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

    def _route(self, action):
        match = _ROUTE.match(self.path)
        if not match or match.group(4) != action:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"Malformed request: {self.command} {self.path}")
        name, version, label, _ = match.groups()
        return name, None if version is None else int(version), label

    def do_GET(self):
        try:
            name, version, label = self._route("/metadata")
            version, signature_map = self.repository.metadata(name, version, label)
            self._reply(200, {"model_spec": {"name": name, "version": str(version)},
                              "metadata": {"signature_def": json_format.MessageToDict(signature_map)}})
        except RequestError as error:
            self._reply(HTTP_STATUS.get(error.code, 500), {"error": str(error)})

    def do_POST(self):
        try:
            name, version, label = self._route(":predict")
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            except ValueError as error:
                raise _invalid(f"JSON parse error: {error}") from None
            except RecursionError:
                raise _invalid("JSON parse error: the request nests too deeply") from None
            if not isinstance(body, dict):
                raise _invalid("request body must be a JSON object")
            signature_name = body.get("signature_name") or SERVING_DEFAULT
            _, (_, signature_defs) = self.repository.resolve(name, version, label)
            if signature_name not in signature_defs:
                raise _invalid(f"Serving signature name: \"{signature_name}\" not found in signature def")
            input_infos = signature_defs[signature_name].inputs
            try:
                inputs, columnar = self._inputs(body, input_infos)
            except (RecursionError, ValueError, TypeError) as error:
                reason = "it nests too deeply" if isinstance(error, RecursionError) else error
                raise _invalid(f"cannot read the inputs: {reason}") from None
            version, outputs = self.repository.predict(name, version, label, signature_name, inputs)
        except RequestError as error:
            self._reply(HTTP_STATUS.get(error.code, 500), {"error": str(error)})
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
            named_rows = rows and all(isinstance(row, dict) and set(row) != {"b64"} for row in rows)
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


def start_rest(repository, host="127.0.0.1", port=0):
    """Start the REST front end (port 0: any free port); returns ``(server, "http://HOST:PORT")``."""
    handler = type("Handler", (_RestHandler,), {"repository": repository})
    try:
        server = http.server.ThreadingHTTPServer((host, port), handler)
    except OSError as error:
        raise OSError(error.errno, f"cannot listen on {_address(host, port)} (REST): "
                                   f"{error.strerror}") from None
    server.daemon_threads = True
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
