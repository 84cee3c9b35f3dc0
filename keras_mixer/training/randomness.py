"""The random state of training: a pure function of the run's seed and the position in it.

Dropout and stochastic depth draw from Keras ``SeedGenerator`` s, whose states
are variables of the model (``model.variables``) but not weights: neither
``save_weights`` nor ``model.save`` keeps them. On torch, Keras' dropout of a layer
created without a seed draws from torch's global generator instead, which no file
keeps either (and which Keras' torch data loader draws from when it starts). A run
resumed from a backup would so draw other masks than the run it resumes.
:class:`RunSeeds` sets all of them from ``(seed, epoch, batch)`` alone, so that a
step draws the same masks whether the run got there in one go or resumed.
"""

import keras
import numpy as np

GENERATORS, GLOBAL = 0, 1  # the two kinds of state RunSeeds seeds


def seed_states(model):
    """The ``SeedGenerator`` states of ``model``: its variables that are not weights.

    Keras' ``Layer.variables`` is ``weights`` plus the random seed states.
    """
    weights = {id(weight) for weight in model.weights}
    return [variable for variable in model.variables if id(variable) not in weights]


def position_seed(*keys):
    """A hash of the integers ``keys``, below 2**31 (it fits every backend's seed dtype)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0] >> 1)


class RunSeeds(keras.callbacks.Callback):
    """Seeds every random state of training from the run's seed and the position in it.

    As each epoch begins, each ``SeedGenerator`` state of the model (``[key,
    counter]``) becomes ``[hash(seed, epoch, index), 0]``: within the epoch the draws
    are Keras' own (each counts on). As each batch begins, the global generators
    (Python, NumPy, TensorFlow, torch, Keras' global ``SeedGenerator``) are seeded
    with ``hash(seed, epoch, batch)`` through ``keras.utils.set_random_seed``.

    Args:
        seed: the run's seed.

    Example:

    ```python
    model.fit(dataset, epochs=3, callbacks=[RunSeeds(seed=0)])
    ```
    """

    def __init__(self, seed):
        super().__init__()
        self.seed = int(seed)
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        # Here (not per batch): JAX reads the model's variables at an epoch's first step only.
        self.epoch = epoch
        for index, state in enumerate(seed_states(self.model)):
            value = np.array([position_seed(self.seed, epoch, GENERATORS, index), 0],
                             dtype=keras.backend.standardize_dtype(state.dtype))
            state.assign(value)

    def on_train_batch_begin(self, batch, logs=None):
        keras.utils.set_random_seed(position_seed(self.seed, self.epoch, GLOBAL, batch))
