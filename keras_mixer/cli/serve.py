"""Serve exported SavedModels locally over TF Serving's gRPC and REST APIs (development only).

A stand-in for TF Serving (keras_mixer.deploy.devserver) for trying an export
on this machine: every SAVED_MODELS/NAME/VERSION/ is served under NAME, with
the same requests and answers as tensorflow_model_server. In production run
TF Serving itself (serving/docker-compose.yml). Runs until Ctrl-C. Examples:

  keras-mixer serve saved_models/                     # gRPC :8500, REST :8501 on 127.0.0.1
  keras-mixer serve saved_models/ --grpc-port 9000 --rest-port 9001
  keras-mixer serve saved_models/ --max-batch-size 16 --read-timeout 5
  keras-mixer predict cat.jpg                         # in another terminal

The limits bound what one request or client can take; a request over one is
refused with the status TF Serving would use and a sentence naming the flag.
"""

import signal
import threading

from keras_mixer.cli.arguments import port, positive_float, positive_int
from keras_mixer.deploy.devserver import DevServer, ModelRepository, ServerLimits

_LIMITS = ServerLimits()


def add_arguments(parser):
    parser.add_argument("base_dir", nargs="?", default="saved_models",
                        help="directory of exported models, NAME/VERSION/ (default: saved_models)")
    parser.add_argument("--grpc-port", type=port, default=8500, help="gRPC port (0: any free port)")
    parser.add_argument("--rest-port", type=port, default=8501, help="REST port (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (0.0.0.0: every interface)")
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-request-bytes", type=positive_int, default=_LIMITS.max_request_bytes,
                        help="largest request: REST body, gRPC message (default: %(default)s)")
    limits.add_argument("--max-image-pixels", type=positive_int, default=_LIMITS.max_image_pixels,
                        help="largest image, height x width, checked before decoding "
                             "(default: %(default)s)")
    limits.add_argument("--max-batch-size", type=positive_int, default=_LIMITS.max_batch_size,
                        help="most images per request (default: %(default)s)")
    limits.add_argument("--read-timeout", type=positive_float, default=_LIMITS.read_timeout,
                        help="seconds a REST client has to send its request (default: %(default)s)")
    limits.add_argument("--workers", type=positive_int, default=_LIMITS.workers,
                        help="threads answering requests, per protocol (default: %(default)s)")
    limits.add_argument("--listen-backlog", type=positive_int, default=_LIMITS.listen_backlog,
                        help="connections queued before they are accepted (default: %(default)s)")


def limits_from_args(args):
    """The :class:`ServerLimits` of parsed arguments."""
    return ServerLimits(max_request_bytes=args.max_request_bytes,
                        max_image_pixels=args.max_image_pixels, max_batch_size=args.max_batch_size,
                        read_timeout=args.read_timeout, workers=args.workers,
                        listen_backlog=args.listen_backlog)


def _stop_on_sigterm():
    """Make ``kill`` stop the server like Ctrl-C (main thread only)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def run(args):
    repository = ModelRepository(args.base_dir, limits=limits_from_args(args))
    try:
        server = DevServer(repository, args.host, args.grpc_port, args.rest_port)
    except OSError as error:
        raise ValueError(f"{error.strerror or error}; choose others with --grpc-port / --rest-port.") from None
    _stop_on_sigterm()
    print("keras-mixer development server, a stand-in for TF Serving: for local trials, "
          "not production (use TF Serving, see serving/).", flush=True)
    print(f"Serving {repository.describe()} from {args.base_dir}", flush=True)
    print(f"gRPC: {server.grpc_address}", flush=True)
    print(f"REST: {server.rest_address}/v1/models/NAME:predict", flush=True)
    limits = repository.limits
    print(f"Limits: {limits.max_request_bytes} bytes and {limits.max_batch_size} images per "
          f"request, {limits.max_image_pixels} pixels per image, {limits.read_timeout:g} s to "
          f"send a REST request, {limits.workers} workers per protocol", flush=True)
    print("Press Ctrl-C to stop.", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("Stopped.", flush=True)
    finally:
        server.stop()
