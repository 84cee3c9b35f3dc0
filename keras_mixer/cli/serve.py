"""Serve exported SavedModels locally over TF Serving's gRPC and REST APIs (development only).

A stand-in for TF Serving (keras_mixer.deploy.devserver) for trying an export
on this machine: every SAVED_MODELS/NAME/VERSION/ is served under NAME, with
the same requests and answers as tensorflow_model_server. In production run
TF Serving itself (serving/docker-compose.yml). Runs until Ctrl-C. Examples:

  keras-mixer serve saved_models/                     # gRPC :8500, REST :8501 on 127.0.0.1
  keras-mixer serve saved_models/ --grpc-port 9000 --rest-port 9001
  keras-mixer predict cat.jpg                         # in another terminal
"""

import signal
import threading

from keras_mixer.deploy.devserver import DevServer, ModelRepository


def add_arguments(parser):
    parser.add_argument("base_dir", nargs="?", default="saved_models",
                        help="directory of exported models, NAME/VERSION/ (default: saved_models)")
    parser.add_argument("--grpc-port", type=int, default=8500, help="gRPC port (0: any free port)")
    parser.add_argument("--rest-port", type=int, default=8501, help="REST port (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (0.0.0.0: every interface)")


def _stop_on_sigterm():
    """Make ``kill`` stop the server like Ctrl-C (main thread only)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def run(args):
    repository = ModelRepository(args.base_dir)
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
    print("Press Ctrl-C to stop.", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("Stopped.", flush=True)
    finally:
        server.stop()
