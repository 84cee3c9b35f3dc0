"""A tiny training run on the digits; optionally SIGKILLs itself after an epoch.

Usage: KERAS_BACKEND=... python -m workers.resume_worker RUN_DIR KILL_AFTER_EPOCH [SETTINGS_JSON]
KILL_AFTER_EPOCH is 0-based (-1: never); SETTINGS_JSON overrides TrainConfig fields, and
``"read_only_backups_at": N`` makes the run's backup folder read-only as epoch N (1-based)
begins, so that the epoch's backup cannot be written.
``$KERAS_MIXER_TEST_KILL_AT`` kills it at a named point of train() instead
(see ``keras_mixer.training.rundir.kill_point``).
"""

import json
import os
import signal
import sys

import keras
from helpers.readonly import set_read_only
from keras_mixer.training import TrainConfig, train

EPOCHS = 3


class KillAfterEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)


class ReadOnlyBackups(keras.callbacks.Callback):
    def __init__(self, run_dir, epoch):
        super().__init__()
        self.directory, self.epoch = os.path.join(run_dir, "backup", "process_0"), epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            set_read_only(self.directory)


def config(run_dir, **overrides):
    """The tiny run's settings."""
    settings = dict(run_dir=run_dir, image_size=8, patch_size=4, num_blocks=1, hidden_dim=16,
                    tokens_mlp_dim=8, channels_mlp_dim=32, epochs=EPOCHS, steps_per_epoch=4,
                    batch_size=16, export=False, progress="2")
    return TrainConfig(**{**settings, **overrides})


def main(run_dir, kill_after, settings="{}"):
    settings = json.loads(settings)
    callbacks = [KillAfterEpoch(int(kill_after))]
    if "read_only_backups_at" in settings:
        callbacks.append(ReadOnlyBackups(run_dir, settings.pop("read_only_backups_at")))
    train(config(run_dir, **settings), callbacks=callbacks)
    print("worker done")


if __name__ == "__main__":
    main(*sys.argv[1:])
