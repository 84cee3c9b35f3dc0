"""The served model: a SavedModel behind the development gRPC server vs called directly.

:func:`served_benchmark` times ``serving_default`` of one SavedModel two ways, at
each batch size and number of concurrent callers: called in this process
(``direct``), and over gRPC on loopback through :class:`~keras_mixer.deploy.devserver.DevServer`
with one :class:`~keras_mixer.deploy.GrpcClient` (own channel) per caller
(``grpc``). Each row has img/s (all callers together), p50/p99 request latency,
and for gRPC rows ``of_direct``: img/s over the best direct img/s at that batch
size, the cost of the serving layer. The server runs in this process, as
TensorFlow releases the GIL while it computes.
"""

import concurrent.futures
import os
import time

import numpy as np

from keras_mixer.deploy.client import GrpcClient
from keras_mixer.deploy.devserver import DevServer, ModelRepository, ServerLimits
from keras_mixer.deploy.signatures import IMAGES_INPUT, SERVING_DEFAULT

BATCHES = (1, 16)
CLIENTS = (1, 8)
IMAGES_PER_CALLER = 16  # each caller sends max(2, this // batch) requests after one warm-up


def served_benchmark(version_dir, image_size, batches=BATCHES, clients=CLIENTS, log=print):
    """Rows of img/s and latency of ``version_dir`` (``BASE/NAME/VERSION``), direct and over gRPC.

    Sends random ``image_size`` x ``image_size`` images.
    """
    import tensorflow as tf

    base_dir, name = os.path.dirname(os.path.dirname(version_dir)), os.path.basename(
        os.path.dirname(version_dir))
    direct = tf.saved_model.load(version_dir).signatures[SERVING_DEFAULT]
    rows = []
    largest = 2 * max(batches) * image_size * image_size * 3 * 4  # float32 requests, with room
    limits = ServerLimits(max_request_bytes=max(ServerLimits().max_request_bytes, largest),
                          max_batch_size=max(batches), workers=max(clients))
    with DevServer(ModelRepository(base_dir, limits=limits), grpc_port=0, rest_port=0) as server:
        for batch in batches:
            images = np.random.default_rng(0).uniform(
                0, 255, (batch, image_size, image_size, 3)).astype("float32")
            requests = max(2, IMAGES_PER_CALLER // batch)

            def call_direct():
                return direct(**{IMAGES_INPUT: tf.constant(images)})

            for how, make_caller in (
                    ("direct", lambda: (call_direct, None)),
                    ("grpc", lambda: _grpc_caller(server.grpc_address, name, images))):
                for count in clients:
                    row = dict(path=how, batch=batch, clients=count,
                               **_measure(make_caller, count, requests, batch))
                    rows.append(row)
                    log(f"served: {how} batch {batch}, {count} caller(s): "
                        f"{row['images_per_second']:.3g} img/s, p50 {row['p50_ms']:.3g} ms, "
                        f"p99 {row['p99_ms']:.3g} ms")
    for row in rows:
        if row["path"] == "grpc":
            best = max(r["images_per_second"] for r in rows
                       if r["path"] == "direct" and r["batch"] == row["batch"])
            row["of_direct"] = row["images_per_second"] / best
    return rows


def _grpc_caller(address, name, images):
    client = GrpcClient(address, model=name, timeout=600.0)
    return (lambda: client.predict_raw({IMAGES_INPUT: images})), client.close


def _measure(make_caller, count, requests, batch):
    """img/s of ``count`` concurrent callers making ``requests`` calls each, and latencies."""
    callers = [make_caller() for _ in range(count)]
    latencies = []

    def work(call):
        for _ in range(requests):
            start = time.perf_counter()
            call()
            latencies.append(time.perf_counter() - start)

    try:
        for call in {id(call): call for call, _ in callers}.values():
            call()  # warm-up: tracing, connections
        with concurrent.futures.ThreadPoolExecutor(count) as pool:
            start = time.perf_counter()
            for future in [pool.submit(work, call) for call, _ in callers]:
                future.result()
            seconds = time.perf_counter() - start
    finally:
        for _, close in callers:
            if close:
                close()
    p50, p99 = np.percentile(np.array(latencies) * 1e3, [50, 99])
    return dict(images_per_second=count * requests * batch / seconds, p50_ms=float(p50),
                p99_ms=float(p99), requests=count * requests)
