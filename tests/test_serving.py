"""gRPC and REST clients against the development server (a TF Serving stand-in) and the CLI around it."""

import concurrent.futures
import json
import os
import re
import queue
import shutil
import socket
import subprocess
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers.processes import run_script, start_module, worker_env
from helpers.tiny import png_bytes

from keras_mixer import cli
from keras_mixer.deploy import client as serving
from keras_mixer.deploy.devserver import DevServer, ModelRepository, ServerLimits

# Tests that behave the same under every Keras backend: scripts/test.sh runs them once.
BACKEND_INDEPENDENT = True


@pytest.fixture(scope="module")
def server(exported_mixer):
    repository = ModelRepository(exported_mixer.export_dir, version_labels={"mixer": {"stable": 1}})
    with DevServer(repository, grpc_port=0, rest_port=0) as dev_server:
        yield {"grpc": dev_server.grpc_address, "rest": dev_server.rest_address}


@pytest.fixture(params=["grpc", "rest"])
def client(request, server):
    client = serving.make_client(server[request.param], request.param, model="mixer", timeout=30)
    yield client
    if request.param == "grpc":
        client.close()


def check(predictions, expected, labels):
    order = np.argsort(-expected, axis=-1)[:, :5]
    assert len(predictions) == len(expected)
    for prediction, classes, probabilities in zip(predictions, order, expected):
        assert prediction.classes == classes.tolist()
        np.testing.assert_allclose(prediction.scores, probabilities[classes], atol=1e-5)
        assert prediction.labels == [labels[c] for c in classes]


def png_files(images, directory):
    paths = []
    for i, image in enumerate(images):
        path = os.path.join(directory, f"{i}.png")
        tf.io.write_file(path, tf.io.encode_png(image))
        paths.append(path)
    return paths


def test_predict_arrays_matches_keras(client, exported_mixer):
    images, expected = exported_mixer.images, exported_mixer.expected
    check(client.predict(images[:8]), expected[:8], exported_mixer.labels)  # uint8 batch
    check(client.predict(images[3].astype("float64")), expected[3:4], exported_mixer.labels)
    outputs = client.predict_raw({"images": images[:2].astype("float32")})
    np.testing.assert_allclose(outputs["probabilities"], expected[:2], atol=1e-5)


def test_predict_files_and_bytes_matches_keras(client, exported_mixer, tmp_path):
    images, expected = exported_mixer.images[:3], exported_mixer.expected[:3]
    check(client.predict(png_files(images, tmp_path)), expected, exported_mixer.labels)
    data = tf.io.encode_png(images[0]).numpy()
    check(client.predict(data), expected[:1], exported_mixer.labels)
    jpeg = tf.io.encode_jpeg(images[0], quality=95).numpy()
    prediction, = client.predict([jpeg])
    assert len(prediction.classes) == 5 and prediction.labels[0] in exported_mixer.labels


def test_version_and_label(server, exported_mixer):
    for protocol in ("grpc", "rest"):
        for kwargs in ({"version": 1}, {"version_label": "stable"}):
            client = serving.make_client(server[protocol], protocol, **kwargs)
            check(client.predict(exported_mixer.images[:1]), exported_mixer.expected[:1],
                  exported_mixer.labels)


def test_metadata_lists_both_signatures(client):
    metadata = client.metadata()
    assert set(metadata) == {"serving_default", "serving_bytes"}
    assert metadata["serving_default"]["inputs"] == {"images": ("float32", [-1, -1, -1, 3])}
    assert metadata["serving_bytes"]["inputs"] == {"image_bytes": ("string", [-1])}
    assert set(metadata["serving_default"]["outputs"]) == {
        "probabilities", "top_k_classes", "top_k_scores", "top_k_labels"}
    assert metadata["serving_bytes"]["outputs"]["probabilities"] == ("float32", [-1, 10])


BAD_REQUESTS = {
    "wrong dtype": ("serving_default", {"images": np.full((1, 32, 32, 3), "x", object)}),
    "uint8 tensor": ("serving_default", {"images": np.zeros((1, 32, 32, 3), "uint8")}),
    "wrong rank": ("serving_default", {"images": np.zeros((32, 32, 3), "float32")}),
    "wrong channels": ("serving_default", {"images": np.zeros((1, 32, 32, 4), "float32")}),
    "wrong input name": ("serving_default", {"pixels": np.zeros((1, 32, 32, 3), "float32")}),
    "corrupt jpeg": ("serving_bytes", {"image_bytes": np.array([b"\xff\xd8\xff\xe0 not a jpeg"], object)}),
    "empty batch": ("serving_default", {"images": np.zeros((0, 32, 32, 3), "float32")}),
    "empty bytes batch": ("serving_bytes", {"image_bytes": np.array([], object)}),
    "unknown signature": ("serving_nope", {"images": np.zeros((1, 32, 32, 3), "float32")}),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_are_invalid_argument(client, exported_mixer, case):
    signature, inputs = BAD_REQUESTS[case]
    if case == "uint8 tensor" and isinstance(client, serving.RestClient):
        pytest.skip("JSON numbers carry no dtype: REST converts them to the signature's float32")
    with pytest.raises(serving.InvalidInputError):
        client.predict_raw(inputs, signature)
    # ... and the server keeps answering.
    check(client.predict(exported_mixer.images[:1]), exported_mixer.expected[:1], exported_mixer.labels)


def test_grpc_status_codes(server):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server["grpc"]))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mixer"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 32, 32), "float32")))
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    request.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_rest_status_codes(server):
    import requests

    url = server["rest"] + "/v1/models/mixer:predict"
    assert requests.post(url, data=b"{not json", timeout=30).status_code == 400
    assert requests.post(url, json={"instances": [[[1, 2]], [[1]]]}, timeout=30).status_code == 400
    assert requests.post(url, json={"instances": [[["a"] * 3] * 32] * 32}, timeout=30).status_code == 400
    b64 = {"signature_name": "serving_bytes", "instances": [{"b64": "bm90IGFuIGltYWdl"}]}
    assert requests.post(url, json=b64, timeout=30).status_code == 400
    columnar = {"inputs": np.zeros((2, 32, 32, 3)).tolist()}
    response = requests.post(url, json=columnar, timeout=30)
    assert response.status_code == 200 and len(response.json()["outputs"]["probabilities"]) == 2
    assert requests.post(server["rest"] + "/v1/models/nope:predict", json=columnar,
                         timeout=30).status_code == 404
    # Deeply nested JSON (parser recursion) and deep instances: a 400 with a reason, not a dropped
    # connection; the server keeps answering.
    for body in (b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                 json.dumps({"instances": [[[[[[[[0]]]]]]]] * 2}).encode()):
        response = requests.post(url, data=body, timeout=30)
        assert response.status_code == 400 and response.json()["error"], response.text[:200]
    response = requests.post(url, json=columnar, timeout=30)
    assert response.status_code == 200


def test_unknown_model_and_version(server, exported_mixer):
    for protocol in ("grpc", "rest"):
        for kwargs in ({"model": "nope"}, {"version": 99}, {"version_label": "canary"}):
            client = serving.make_client(server[protocol], protocol, **kwargs)
            with pytest.raises(serving.ModelNotFoundError):
                client.predict(exported_mixer.images[:1])


def test_unreachable_server(exported_mixer):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for protocol, address in (("grpc", f"127.0.0.1:{port}"), ("rest", f"127.0.0.1:{port}")):
        client = serving.make_client(address, protocol, timeout=2)
        with pytest.raises(serving.ServerUnavailableError, match="unreachable"):
            client.predict(exported_mixer.images[:1])


def test_client_side_input_checks():
    with pytest.raises(serving.InvalidInputError, match="shape"):
        serving.prepare_inputs(np.zeros((2, 32, 32)))
    with pytest.raises(serving.InvalidInputError, match="Empty batch"):
        serving.prepare_inputs(np.zeros((0, 32, 32, 3)))
    with pytest.raises(serving.InvalidInputError, match="numeric"):
        serving.prepare_inputs(np.full((1, 2, 2, 3), "x"))
    with pytest.raises(serving.InvalidInputError, match="Cannot read"):
        serving.prepare_inputs(["/no/such/image.jpg"])
    signature, inputs = serving.prepare_inputs(np.zeros((4, 4, 3), "uint8"))
    assert signature == "serving_default" and inputs["images"].dtype == np.float32
    with pytest.raises(ValueError, match="protocol"):
        serving.make_client("x", "carrier-pigeon")


def test_concurrent_clients(server, exported_mixer):
    """8 clients (4 gRPC, 4 REST) x 50 single-image requests, all answered correctly."""
    images, expected = exported_mixer.images, exported_mixer.expected

    def run(worker):
        protocol = ("grpc", "rest")[worker % 2]
        client = serving.make_client(server[protocol], protocol, timeout=60)
        wrong = 0
        for i in range(50):
            index = (worker * 50 + i) % len(images)
            prediction, = client.predict(images[index])
            wrong += prediction.classes[0] != int(np.argmax(expected[index]))
            wrong += abs(prediction.scores[0] - float(np.max(expected[index]))) > 1e-5
        return wrong

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(run, range(8))) == [0] * 8


def test_invalid_argument_carries_tensorflow_message(client):
    """The signature's own message reaches the client, not only "Graph execution error:"."""
    corrupt = {"image_bytes": np.array([b"\xff\xd8\xff\xe0 not a jpeg"], object)}
    with pytest.raises(serving.InvalidInputError, match="Invalid JPEG data") as error:
        client.predict_raw(corrupt, "serving_bytes")
    assert "Graph execution error" not in str(error.value)
    assert "{{node" not in str(error.value) and "[Op:" not in str(error.value)  # no graph context
    nan = {"images": np.full((1, 32, 32, 3), np.nan, "float32")}
    if isinstance(client, serving.RestClient):  # JSON has no NaN; an empty row list has no shape
        with pytest.raises(serving.InvalidInputError, match="JSON"):
            client.predict_raw(nan)
        return
    with pytest.raises(serving.InvalidInputError, match="images contain NaN or Inf"):
        client.predict_raw(nan)
    with pytest.raises(serving.InvalidInputError, match="empty batch: send at least one image"):
        client.predict_raw({"images": np.zeros((0, 32, 32, 3), "float32")})


def test_repository_follows_versions_on_disk(exported_mixer, tmp_path):
    base = tmp_path / "models"
    shutil.copytree(exported_mixer.export_dir, base)
    repository = ModelRepository(str(base))
    assert repository.resolve("mixer")[0] == 1 and repository.describe() == "mixer (version 1)"
    (base / "mixer" / ".tmp-2").mkdir()  # an export in progress is not a version
    shutil.copytree(base / "mixer" / "1", base / "mixer" / "2")
    assert repository.resolve("mixer")[0] == 2
    assert repository.resolve("mixer", version=1)[0] == 1
    shutil.rmtree(base / "mixer" / "2")
    assert repository.resolve("mixer")[0] == 1
    with pytest.raises(ValueError, match="No SavedModels"):
        ModelRepository(str(tmp_path / "models" / "mixer" / ".tmp-2"))
    with pytest.raises(FileNotFoundError, match="not found"):
        ModelRepository(str(tmp_path / "missing"))


def test_predict_command(server, exported_mixer, tmp_path, capsys):
    paths = png_files(exported_mixer.images[:2], tmp_path)
    top = exported_mixer.labels[int(np.argmax(exported_mixer.expected[0]))]
    for protocol in ("grpc", "rest"):
        assert cli.main([*paths, "--server", server[protocol], "--protocol", protocol, "--top-k", "2"],
                        command="predict", prog="predict.py") == 0
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 2 and lines[0].startswith(paths[0] + ": " + top)
        assert lines[0].count(",") == 1  # two classes
    np.save(tmp_path / "batch.npy", exported_mixer.images[:3])
    assert cli.main(["predict", str(tmp_path / "batch.npy"), "--server", server["grpc"]]) == 0
    assert capsys.readouterr().out.count("batch.npy[") == 3
    assert cli.main(["predict", paths[0], "--server", server["grpc"], "--model", "nope"]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    (np.array([1, "a"], dtype=object), "holds Python objects"),
    (np.array(["a", "b"]), "expected numeric pixels"),
    (np.zeros((4, 4)), "expected \\(n, H, W, 3\\)"),
])
def test_predict_rejects_bad_arrays(tmp_path, capsys, content, message):
    path = str(tmp_path / "bad.npy")
    np.save(path, content, allow_pickle=True)
    assert cli.main(["predict", path, "--server", "127.0.0.1:1"]) == 2  # before any request
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}") and "Traceback" not in err
    assert re.search(message, err)


def test_predict_rejects_top_k_below_one(capsys):
    with pytest.raises(SystemExit) as error:
        cli.main(["predict", "cat.jpg", "--top-k", "0"])
    assert error.value.code == 2 and "--top-k: must be at least 1" in capsys.readouterr().err


def _read_addresses(process, timeout=240):
    """The gRPC and REST addresses a starting ``keras-mixer serve`` prints (all its output kept)."""
    lines = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True)
    reader.start()
    found, deadline = {}, time.monotonic() + timeout
    while len(found) < 2:
        assert process.poll() is None, f"serve exited with {process.returncode}: {process.stderr.read()}"
        try:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0))
        except queue.Empty:
            pytest.fail("serve did not print its addresses")
        for key, prefix in (("grpc", "gRPC: "), ("rest", "REST: ")):
            if line.startswith(prefix):
                found[key] = line[len(prefix):].split("/v1/")[0].strip()
    return found, lines, reader


def test_serve_command_answers_predict_script(exported_mixer, tmp_path):
    """`keras-mixer serve` in its own process, queried by scripts/predict.py as a user runs them."""
    env = worker_env(keras.backend.backend(), KERAS_MIXER_COMMAND="serve")
    process = start_module("keras_mixer.cli", ["serve", exported_mixer.export_dir, "--grpc-port", "0",
                                               "--rest-port", "0", "--host", "127.0.0.1"],
                           env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        addresses, output, reader = _read_addresses(process)
        image = png_files(exported_mixer.images[:1], tmp_path)[0]
        top = exported_mixer.labels[int(np.argmax(exported_mixer.expected[0]))]
        for protocol, address in addresses.items():
            result = run_script("predict.py", [image, "--server", address, "--protocol", protocol],
                                timeout=300)
            assert result.returncode == 0, result.stderr[-3000:]
            assert result.stdout.startswith(f"{image}: {top} ")
        np.save(tmp_path / "nan.npy", np.full((1, 32, 32, 3), np.nan, "float32"))
        result = run_script("predict.py", [tmp_path / "nan.npy", "--server", addresses["grpc"]], timeout=300)
        assert result.returncode == 2 and "images contain NaN or Inf" in result.stderr
    finally:
        process.terminate()
        process.wait(timeout=60)
    reader.join(timeout=60)
    assert process.returncode == 0, process.stderr.read()[-3000:]
    assert "Stopped.\n" in list(output.queue)


def test_client_errors_are_importable_from_the_package():
    """The README names them as keras_mixer.X."""
    import keras_mixer

    for name in ("ServingError", "ServerUnavailableError", "ModelNotFoundError", "InvalidInputError"):
        assert issubclass(getattr(keras_mixer, name), keras_mixer.ServingError), name


# ----------------------------------------------------------------------------- limits (issue 27 §3)

LIMITS = ServerLimits(max_request_bytes=2 ** 20, max_image_pixels=100 * 100, max_batch_size=8,
                      read_timeout=1.0, workers=2, listen_backlog=64)


@pytest.fixture(scope="module")
def limited(exported_mixer):
    """A server with small limits: 1 MiB requests, 100x100 images, batches of 8, 1 s to send a
    REST request, 2 workers per protocol."""
    repository = ModelRepository(exported_mixer.export_dir, limits=LIMITS)
    with DevServer(repository, grpc_port=0, rest_port=0) as dev_server:
        yield {"grpc": dev_server.grpc_address, "rest": dev_server.rest_address}


def raw_http(address, head, body=b"", timeout=10):
    """Send ``head`` (request line and headers) and ``body`` as they are; ``(status, JSON body)``
    of the answer, read until the server closes the connection."""
    host, port = address.split("//")[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head.encode() + b"\r\n\r\n" + body)
        answer = b""
        while chunk := sock.recv(1 << 16):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


def post_head(length, path="/v1/models/mixer:predict"):
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}"


def grpc_predict(address, inputs, signature="serving_default", output_filter=()):
    """A raw gRPC Predict of ``{name: TensorProto}``: ``(status code, details)``."""
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mixer"
    request.model_spec.signature_name = signature
    for key, proto in inputs.items():
        request.inputs[key].CopyFrom(proto)
    request.output_filter.extend(output_filter)
    with grpc.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            response = stub.Predict(request, timeout=60)
        except grpc.RpcError as error:
            return error.code(), error.details()
    return grpc.StatusCode.OK, sorted(response.outputs)


def test_rest_content_length_is_checked_before_reading(server, exported_mixer):
    """A negative, a missing and a huge Content-Length are answered at once (they hung, or
    raised MemoryError, before)."""
    status, body = raw_http(server["rest"], post_head(-1), b"{}")
    assert status == 400 and "Content-Length must be a whole number" in body["error"]
    status, body = raw_http(server["rest"], post_head(10 ** 12), b"{}")
    assert status == 413 and "limit" in body["error"] and "--max-request-bytes" in body["error"]
    status, body = raw_http(server["rest"], "POST /v1/models/mixer:predict HTTP/1.1\r\nHost: x")
    assert status == 411 and "Content-Length" in body["error"]
    check(serving.make_client(server["rest"], "rest").predict(exported_mixer.images[:1]),
          exported_mixer.expected[:1], exported_mixer.labels)


def test_rest_body_shorter_than_its_length_times_out(limited):
    started = time.monotonic()
    status, body = raw_http(limited["rest"], post_head(100), b'{"instances"')
    assert status == 408 and "12 of 100 bytes" in body["error"] and "--read-timeout" in body["error"]
    assert time.monotonic() - started < 10


def test_rest_body_over_the_limit_is_refused_unread(limited):
    """A 1.5 MB JSON body against a 1 MiB limit: 413, which the client reads (not a reset)."""
    import requests

    pixels = np.full((6, 128, 128, 3), 255, "uint8")  # 1.5 MB of JSON
    instances = pixels.tolist()
    response = requests.post(limited["rest"] + "/v1/models/mixer:predict",
                             json={"instances": instances}, timeout=30)
    assert response.status_code == 413 and "--max-request-bytes" in response.json()["error"]
    client = serving.make_client(limited["rest"], "rest", timeout=30)
    with pytest.raises(serving.InvalidInputError, match="larger than the server's limit"):
        client.predict(pixels)


def test_silent_connections_hold_no_threads(limited, exported_mixer):
    """200 connections that send nothing: no thread each (2 workers), a real request is still
    answered, and the silent ones get 408 after the read timeout."""
    before = threading.active_count()
    host, port = limited["rest"].split("//")[1].rsplit(":", 1)
    silent = [socket.create_connection((host, int(port)), timeout=30) for _ in range(200)]
    try:
        assert threading.active_count() <= before + LIMITS.workers
        client = serving.make_client(limited["rest"], "rest", timeout=60)
        check(client.predict(exported_mixer.images[:1]), exported_mixer.expected[:1],
              exported_mixer.labels)
        assert silent[0].recv(100).startswith(b"HTTP/1.0 408 ")
    finally:
        for sock in silent:
            sock.close()


def test_listen_backlog_is_deeper_than_five(server):
    port = server["rest"].rsplit(":", 1)[1]
    listing = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True)
    if listing.returncode != 0 or not listing.stdout.strip():
        pytest.skip("ss (iproute2) cannot list listening sockets here")
    backlog = int(listing.stdout.split()[2])  # LISTEN sockets: Send-Q is the backlog
    assert backlog == ServerLimits().listen_backlog


@pytest.mark.parametrize("signature_name", [["serving_default"], {"a": 1}, 3, 0, []])
def test_rest_signature_name_must_be_a_string(server, signature_name):
    import requests

    response = requests.post(server["rest"] + "/v1/models/mixer:predict", timeout=30,
                             json={"signature_name": signature_name, "instances": [[[[0, 0, 0]]]]})
    assert response.status_code == 400
    assert response.json()["error"].startswith("'signature_name' must be a string")


def test_rest_empty_instances_is_the_empty_batch_error(server):
    import requests

    response = requests.post(server["rest"] + "/v1/models/mixer:predict", json={"instances": []},
                             timeout=30)
    assert response.status_code == 400
    assert response.json()["error"] == "empty batch: send at least one image"


def test_grpc_tensors_are_checked_from_their_declared_shape(server):
    import grpc

    huge = tf.make_tensor_proto(np.zeros((0,), "float32"))  # a few bytes, declaring 432 MB
    huge.ClearField("tensor_shape")
    for size in (1, 6000, 6000, 3):
        huge.tensor_shape.dim.add(size=size)
    code, details = grpc_predict(server["grpc"], {"images": huge})
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "declares shape [1, 6000, 6000, 3]" in details or "6000x6000" in details, details
    negative = tf.make_tensor_proto(np.zeros((1, 32, 32, 3), "float32"))
    negative.tensor_shape.dim[0].size = -1
    code, details = grpc_predict(server["grpc"], {"images": negative})
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "dimensions must be >= 0" in details


def test_grpc_output_filter_names_known_outputs(server):
    import grpc

    images = {"images": tf.make_tensor_proto(np.zeros((1, 32, 32, 3), "float32"))}
    code, outputs = grpc_predict(server["grpc"], images, output_filter=["top_k_classes"])
    assert code == grpc.StatusCode.OK and outputs == ["top_k_classes"]
    code, details = grpc_predict(server["grpc"], images, output_filter=["nope"])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("output tensor alias not found in signature: nope Outputs expected")
    code, details = grpc_predict(server["grpc"], images, output_filter=["probabilities"] * 2)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "duplicate output tensor alias" in details


def test_huge_png_is_refused_from_its_header(client):
    """A 291 KB PNG of 10000 x 10000 pixels (1.2 GB to decode): refused before decoding."""
    with pytest.raises(serving.InvalidInputError, match="10000x10000 pixels.*--max-image-pixels"):
        client.predict([png_bytes(10000, 10000)])


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_batch_pixels_and_bytes_limits(limited, protocol):
    client = serving.make_client(limited[protocol], protocol, timeout=60)
    with pytest.raises(serving.InvalidInputError, match="batch of 9.*--max-batch-size"):
        client.predict(np.zeros((9, 32, 32, 3), "uint8"))
    with pytest.raises(serving.InvalidInputError, match="101x100 pixels.*--max-image-pixels"):
        client.predict(np.zeros((1, 101, 100, 3), "uint8"))
    with pytest.raises(serving.InvalidInputError, match="120x120 pixels.*--max-image-pixels"):
        client.predict([png_bytes(120, 120)])
    assert len(client.predict([png_bytes(32, 32)] * 8)) == 8  # at the limits: answered
    if protocol == "grpc":  # 1.08 MB of float32 against 1 MiB: gRPC's own limit
        with pytest.raises(serving.ServingError, match="RESOURCE_EXHAUSTED"):
            client.predict(np.zeros((9, 100, 100, 3), "float32"))
