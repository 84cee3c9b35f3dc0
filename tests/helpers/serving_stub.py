"""A small stand-in for TF Serving (whose binary cannot be installed here), for tests.

It serves SavedModels the way ``tensorflow_model_server`` does: scans
``BASE/NAME/VERSION/`` directories, loads tag ``serve``, picks the signature by
name (default ``serving_default``), checks inputs against the SignatureDef
(names, dtype, rank / known dims), feeds them by signature key and returns the
outputs by key. Failures map to gRPC status codes (REST: 400 / 404) as TF
Serving does, and the server keeps answering.

* gRPC: ``PredictionService.Predict`` and ``GetModelMetadata`` (port from
  ``start_grpc``).
* REST: ``POST /v1/models/NAME[/versions/N|/labels/L]:predict`` (row
  ``instances`` or columnar ``inputs``, ``{"b64": ...}`` for bytes) and
  ``GET .../metadata``.
"""

import base64
import concurrent.futures
import http.server
import json
import os
import re
import threading

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

HTTP_STATUS = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404}


class StubError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def _invalid(message):
    return StubError(grpc.StatusCode.INVALID_ARGUMENT, message)


class ModelRepository:
    """All integer versions under ``base_dir/NAME/``, loaded like TF Serving loads them."""

    def __init__(self, base_dir, version_labels=None):
        self.models = {}
        for name in sorted(os.listdir(base_dir)):
            model_dir = os.path.join(base_dir, name)
            if not os.path.isdir(model_dir):
                continue
            versions = {int(v): os.path.join(model_dir, v) for v in os.listdir(model_dir) if v.isdigit()}
            if versions:
                self.models[name] = {v: self._load(path) for v, path in versions.items()}
        self.version_labels = version_labels or {}

    @staticmethod
    def _load(path):
        proto = saved_model_pb2.SavedModel()
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            proto.ParseFromString(f.read())
        (meta_graph,) = [m for m in proto.meta_graphs if "serve" in m.meta_info_def.tags]
        return tf.saved_model.load(path, tags=["serve"]), meta_graph.signature_def

    def resolve(self, spec_name, version=None, label=None):
        if spec_name not in self.models:
            raise StubError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({spec_name})")
        versions = self.models[spec_name]
        if label:
            if label not in self.version_labels.get(spec_name, {}):
                raise StubError(grpc.StatusCode.NOT_FOUND, f"Unknown version label {label!r} of {spec_name}")
            version = self.version_labels[spec_name][label]
        if version is None:
            version = max(versions)
        if version not in versions:
            raise StubError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Specific({spec_name}, {version})")
        return version, versions[version]

    def predict(self, name, version, label, signature_name, inputs):
        version, (loaded, signature_defs) = self.resolve(name, version, label)
        signature_name = signature_name or "serving_default"
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
            raise _invalid(str(error).strip().splitlines()[0]) from None
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
        except StubError as error:
            context.abort(error.code, str(error))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = version
        response.model_spec.signature_name = spec.signature_name or "serving_default"
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
        except StubError as error:
            context.abort(error.code, str(error))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = version
        response.metadata["signature_def"].Pack(signature_map)
        return response


def start_grpc(repository, max_workers=8):
    """Start a gRPC server on 127.0.0.1; returns ``(server, "127.0.0.1:PORT")``."""
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=max_workers))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(repository), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


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

    def log_message(self, *args):  # keep test output quiet
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
            raise StubError(grpc.StatusCode.NOT_FOUND, f"Malformed request: {self.command} {self.path}")
        name, version, label, _ = match.groups()
        return name, None if version is None else int(version), label

    def do_GET(self):
        try:
            name, version, label = self._route("/metadata")
            version, signature_map = self.repository.metadata(name, version, label)
            self._reply(200, {"model_spec": {"name": name, "version": str(version)},
                              "metadata": {"signature_def": json_format.MessageToDict(signature_map)}})
        except StubError as error:
            self._reply(HTTP_STATUS.get(error.code, 500), {"error": str(error)})

    def do_POST(self):
        try:
            name, version, label = self._route(":predict")
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            except ValueError as error:
                raise _invalid(f"JSON parse error: {error}") from None
            if not isinstance(body, dict):
                raise _invalid("request body must be a JSON object")
            signature_name = body.get("signature_name") or "serving_default"
            _, (_, signature_defs) = self.repository.resolve(name, version, label)
            if signature_name not in signature_defs:
                raise _invalid(f"Serving signature name: \"{signature_name}\" not found in signature def")
            input_infos = signature_defs[signature_name].inputs
            inputs, columnar = self._inputs(body, input_infos)
            version, outputs = self.repository.predict(name, version, label, signature_name, inputs)
        except StubError as error:
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


def start_rest(repository):
    """Start a REST server on 127.0.0.1; returns ``(server, "http://127.0.0.1:PORT")``."""
    handler = type("Handler", (_RestHandler,), {"repository": repository})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
