"""What a measurement ran on, inside one backend: the device, library versions, peak memory."""

import os
import sys
import threading

import keras


def device_name():
    """The accelerator Keras computes on, or ``"cpu"``."""
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            device = jax.devices()[0]
            if device.platform != "cpu":
                return f"{device.platform}:{getattr(device, 'device_kind', '')}"
        if backend == "torch":
            import torch

            if torch.cuda.is_available():
                return f"cuda:{torch.cuda.get_device_name(0)}"
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                details = tf.config.experimental.get_device_details(gpus[0])
                return f"gpu:{details.get('device_name', gpus[0].name)}"
    except Exception:  # noqa: BLE001 - reporting only
        pass
    return "cpu"


def versions():
    """Versions of Keras and of the current backend's library."""
    backend = keras.backend.backend()
    return {"keras": keras.__version__, backend: __import__(backend).__version__}


class PeakMemory:
    """Peak memory while the block runs: accelerator peak on GPUs, else resident set size (MiB)."""

    def __enter__(self):
        self.peak_mib = 0.0
        self._gpu = _gpu_peak_reader()
        if self._gpu is None:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while True:
            self.peak_mib = max(self.peak_mib, _rss_mib())
            if self._stop.wait(0.005):
                return

    def __exit__(self, *exc):
        if self._gpu is not None:
            self.peak_mib = self._gpu()
        else:
            self._stop.set()
            self._thread.join()


def _rss_mib():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: the process' lifetime peak
        import resource

        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _gpu_peak_reader():
    """A callable returning the accelerator's peak MiB since now, or None on CPU."""
    backend = keras.backend.backend()
    if device_name() == "cpu":
        return None
    if backend == "torch":
        import torch

        torch.cuda.reset_peak_memory_stats()
        return lambda: torch.cuda.max_memory_allocated() / 2**20
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.reset_memory_stats("GPU:0")
        return lambda: tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    import jax

    device = jax.devices()[0]  # JAX keeps a lifetime peak only
    return lambda: (device.memory_stats() or {}).get("peak_bytes_in_use", 0) / 2**20
