"""Every use of another library's private API, in one place, each behind a version guard.

Each entry says which upstream code it relies on and why no public API does the
job. An entry that changes what runs checks the installed version against the
versions it was verified with (:data:`VERIFIED`): outside them it falls back to the
public (slower) way, where there is one, or says what to do. ``tests/test_compat.py``
fails when the upstream behaviour an entry relies on changes, so that the entry is
looked at again (and :data:`VERIFIED` moved) with each upgrade.
"""

import contextlib
import functools
import importlib
import inspect
import warnings

import keras

# The releases (major, minor) each library's entries were verified with.
VERIFIED = {"keras": ((3, 15),), "torch": ((2, 13),), "tensorflow": ((2, 21),),
            "keras_cv": ((0, 9),), "keras_hub": ((0, 32),)}


def version(library):
    """``(major, minor)`` of an installed library."""
    text = importlib.import_module(library).__version__.split("+")[0]
    return tuple(int(part) for part in text.split(".")[:2])


@functools.cache
def verified(library):
    """Whether the installed ``library`` is a release the entries were verified with."""
    return version(library) in VERIFIED[library]


@functools.cache
def _warn_unverified(library, entry):
    warnings.warn(f"keras_mixer.compat.{entry}: {library} {importlib.import_module(library).__version__} "
                  f"is newer than the releases it was verified with {VERIFIED[library]}; using the "
                  "public (slower) code path instead.", stacklevel=3)


# ----------------------------------------------------------------------------- Keras


def sublayers(layer, recursive=False):
    """The layers inside ``layer`` (directly, or at any depth), in creation order.

    Keras 3 tracks them in ``Layer._flatten_layers(include_self=False, recursive=...)``
    (what ``Model.quantize`` and saving walk); it has no public equivalent for a plain layer.
    """
    return list(layer._flatten_layers(include_self=False, recursive=recursive))


def backend_optimizer_class(public_class):
    """The class that ``public_class(...)`` really instantiates on this backend.

    On torch, Keras swaps ``keras.optimizers.AdamW`` for its ``_foreach`` variant
    (``keras/src/backend/torch/optimizers/torch_optimizer.py``, ``TorchOptimizer.__new__``),
    but only for its own classes, not for a subclass. A subclass that wants the torch
    variant's update therefore derives from the class that ``__new__`` returns, found
    here without importing ``keras.src``. Elsewhere it is ``public_class`` itself.
    """
    if keras.backend.backend() != "torch":
        return public_class
    return type(public_class(learning_rate=0.0))


# ----------------------------------------------------------------------------- TensorFlow multi-worker


# The lines of keras/src/backend/tensorflow/trainer.py that patch_keras_for_multi_worker
# works around, by the function that holds them.
KERAS_MULTI_WORKER_BUGS = {
    "_maybe_symbolic_build": "self.distribute_strategy.reduce(",
    "reduce_per_replica": 'strategy.reduce("MEAN", v, axis=0)',
}


def keras_multi_worker_bugs():
    """The functions of :data:`KERAS_MULTI_WORKER_BUGS` that the installed Keras still has."""
    from keras.src.backend.tensorflow import trainer

    functions = {"_maybe_symbolic_build": trainer.TensorFlowTrainer._maybe_symbolic_build,
                 "reduce_per_replica": trainer.reduce_per_replica}
    return [name for name, line in KERAS_MULTI_WORKER_BUGS.items()
            if line in inspect.getsource(functions[name])]


@functools.cache
def patch_keras_for_multi_worker():
    """Let Keras 3's ``model.fit`` / ``evaluate`` run under ``MultiWorkerMirroredStrategy``.

    Two bugs in ``keras/src/backend/tensorflow/trainer.py`` (Keras 3.15 and master;
    keras-team/keras#20585, tensorflow/tensorflow#72388), each patched only while its
    offending line is still in the installed Keras, and only in multi-worker mode:

    - ``_maybe_symbolic_build`` all-reduces the first input batch (a tuple of
      ``PerReplica``) to learn its shapes, which the collective ops reject ("Attempt to
      convert a value (PerReplica...) to a Tensor"). Here: the first local replica's batch,
      which has the same shapes, and no collective.
    - ``reduce_per_replica`` reduces the scalar losses and metrics that a step returns with
      ``strategy.reduce("MEAN", v, axis=0)``, invalid on a scalar ("Invalid reduction
      dimension 0 for input with 0 dimensions"). Here: the mean over replicas
      (``axis=None``) for scalars.
    """
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    bugs = keras_multi_worker_bugs()
    multi_worker = trainer._collective_all_reduce_multi_worker

    build = trainer.TensorFlowTrainer._maybe_symbolic_build
    if "_maybe_symbolic_build" in bugs:
        def maybe_symbolic_build(self, iterator=None, data_batch=None):
            strategy = self.distribute_strategy
            if self._distribute_strategy is None or iterator is None or not multi_worker(strategy):
                return build(self, iterator=iterator, data_batch=data_batch)
            for _, _, it in iterator:
                data_batch = tree.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0], next(it))
                break
            with strategy.scope():
                self._symbolic_build(data_batch=data_batch)

        trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build

    reduce = trainer.reduce_per_replica
    if "reduce_per_replica" in bugs:
        def reduce_per_replica(values, strategy, reduction):
            if reduction not in ("auto", "mean") or not multi_worker(strategy):
                return reduce(values, strategy, reduction)
            return tree.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None)
                if strategy.experimental_local_results(v)[0].shape.rank == 0
                else reduce(v, strategy, reduction), values)

        trainer.reduce_per_replica = reduce_per_replica



# ----------------------------------------------------------------------------- JAX


def jax_initialize_rng():
    """Seed Keras' global RNG the same in every process of a multi-process JAX job.

    What ``keras.distribution.initialize`` does after ``jax.distributed.initialize``
    (``keras/src/backend/jax/distribution_lib.py``, ``initialize_rng``); called by
    :mod:`keras_mixer.distribute`, which calls ``jax.distributed.initialize`` itself to
    pass a heartbeat timeout that Keras' public function does not take.
    """
    from keras.src.backend.jax.distribution_lib import initialize_rng

    initialize_rng()


# ----------------------------------------------------------------------------- keras-hub


def keras_hub_timm_loader_class():
    """keras-hub's loader of timm Hugging Face repositories, ``TimmPresetLoader``
    (``keras_hub/src/utils/timm/preset_loader.py``), for a subclass to build on."""
    from keras_hub.src.utils.timm.preset_loader import TimmPresetLoader

    return TimmPresetLoader


def route_timm_architecture(prefix, loader_class):
    """Have keras-hub hand timm repositories whose ``architecture`` starts with ``prefix`` to
    ``loader_class`` (a subclass of :func:`keras_hub_timm_loader_class`).

    keras-hub picks a converter by the architecture's name in ``TimmPresetLoader.__init__``,
    and raises "KerasHub has no converter for timm models" for any other; it has no registry
    to add one to. Here ``TimmPresetLoader.__new__`` makes a ``loader_class`` instead for those
    repositories, so that ``keras_hub.models.ImageClassifier.from_preset("hf://timm/...")``
    reaches it. Only on a verified keras-hub; elsewhere keras-hub's own error stays.

    Returns:
        Whether the route is in place.
    """
    timm_loader = keras_hub_timm_loader_class()
    if not verified("keras_hub"):
        _warn_unverified("keras_hub", "route_timm_architecture")
        return False
    routes = timm_loader.__dict__.get("_keras_mixer_routes")
    if routes is None:
        routes = {}

        def __new__(cls, preset, config, *args, **kwargs):
            if cls is timm_loader:
                architecture = str((config or {}).get("architecture", ""))
                cls = next((routed for start, routed in routes.items()
                            if architecture.startswith(start)), cls)
            return object.__new__(cls)

        timm_loader.__new__ = __new__
        timm_loader._keras_mixer_routes = routes
    routes[prefix] = loader_class
    return True


# ----------------------------------------------------------------------------- torch


def fused_adamw_available():
    """Whether :func:`fused_adamw` may run (torch's private kernel, on a verified torch)."""
    import torch

    if not verified("torch"):
        _warn_unverified("torch", "fused_adamw")
        return False
    return hasattr(torch, "_fused_adamw_")


def fused_adamw(*args, **kwargs):
    """``torch._fused_adamw_``: the kernel behind ``torch.optim.AdamW(fused=True)``, one pass over
    every parameter of a group. ``torch.optim.AdamW`` owns its state; Keras' optimizer owns
    the moments, so the kernel is called on them directly."""
    import torch

    return torch._fused_adamw_(*args, **kwargs)


def foreach_mul(tensors, scalar):
    """``torch._foreach_mul``: one call scaling a list of tensors (the kernel behind
    ``torch.nn.utils.clip_grad_norm_(foreach=True)``, which clips in place)."""
    import torch

    return torch._foreach_mul(tensors, scalar)


@contextlib.contextmanager
def inductor_freezing(options):
    """``torch._inductor.config.patch(options)`` while a compiled module runs.

    Dynamo decides whether weights are constants from inductor's *global* config
    (``torch._dynamo.utils.is_parameter_freezing``), not from ``torch.compile(options=...)``:
    without this, inductor keeps them as inputs, and nothing is prepacked or fused.
    """
    import torch

    if not verified("torch"):
        _warn_unverified("torch", "inductor_freezing")
        yield
        return
    with torch._inductor.config.patch(options):
        yield


# ----------------------------------------------------------------------------- TensorFlow


def set_quantization_debug_options(debugger, options):
    """Replace a ``tf.lite.experimental.QuantizationDebugger``'s options without rebuilding it.

    The public ``options`` setter also rebuilds the instrumented model (and fails once no op is
    left to verify); the plain quantization only reads ``_debug_options``.
    """
    debugger._debug_options = options


# ----------------------------------------------------------------------------- keras-cv


def keras_cv_reseeder(layer):
    """``reseed(seed)``: sets every random state of a keras-cv augmentation ``layer`` from ``seed``.

    keras-cv 0.9 layers draw from a stateful ``tf.random.Generator`` each
    (``_random_generator``, private), and ``RandomContrast`` / ``RandomBrightness``
    (``RandAugment``'s) from ``tf.random.uniform`` ops whose state lives in the op
    and restarts with every new input pipeline, so a pipeline rebuilt to resume a
    run would not repeat its augmentations. Here every ``FactorSampler`` that
    draws from such an op is replaced by one drawing from its layer's generator,
    and ``reseed`` (called in a ``tf.data`` map, before the layer) resets every
    generator of the layer tree to a state derived from ``seed``: the layer's
    output becomes a pure function of its input and ``seed``. keras-cv has no
    public way to seed a call; its layers are found by walking their attributes.

    Args:
        layer: a keras-cv ``BaseImageAugmentationLayer`` (e.g. ``RandAugment``).

    Returns:
        ``reseed(seed)``, for a stateless seed ``(2,)`` int64 tensor, to call in the
        same ``tf.data`` function as ``layer``, just before it (the generators'
        resets come first there: TensorFlow orders ops on the same variable as written).

    Raises:
        RuntimeError: keras-cv is not a verified release, or the
            layer holds a random factor sampler of a kind not handled here.
    """
    import keras
    import keras_cv
    import tensorflow as tf

    if not verified("keras_cv"):  # no public way to seed it: say what to do
        raise RuntimeError(
            f"keras-cv {keras_cv.__version__} is not a release whose random state keras-mixer "
            f"knows how to seed (verified: {VERIFIED['keras_cv']}); install keras-cv 0.9 or "
            f"turn RandAugment off (--randaug-magnitude 0).")
    samplers = keras_cv.core
    generators, seen = [], set()

    class GeneratorUniform(samplers.FactorSampler):
        def __init__(self, sampler, generator):
            self.lower, self.upper, self.generator = sampler.lower, sampler.upper, generator

        def __call__(self, shape=(), dtype="float32"):
            return self.generator.uniform(shape, self.lower, self.upper, dtype=dtype)

    class GeneratorNormal(samplers.FactorSampler):
        def __init__(self, sampler, generator):
            self.sampler, self.generator = sampler, generator

        def __call__(self, shape=(), dtype="float32"):
            s = self.sampler
            return tf.clip_by_value(self.generator.normal(shape, s.mean, s.stddev, dtype=dtype),
                                    s.min_value, s.max_value)

    def visit(node):
        if id(node) in seen:
            return
        seen.add(id(node))
        attributes = vars(node)
        generator = attributes.get("_random_generator")
        for name, value in list(attributes.items()):
            if isinstance(value, tf.random.Generator):
                if all(value is not known for known in generators):
                    generators.append(value)
            elif isinstance(value, keras.layers.Layer):
                visit(value)
            elif isinstance(value, (list, tuple)):
                for item in value:
                    if isinstance(item, keras.layers.Layer):
                        visit(item)
            elif isinstance(value, (samplers.UniformFactorSampler, samplers.NormalFactorSampler)) \
                    and isinstance(generator, tf.random.Generator):
                wrapper = (GeneratorUniform if isinstance(value, samplers.UniformFactorSampler)
                           else GeneratorNormal)
                setattr(node, name, wrapper(value, generator))
            elif isinstance(value, samplers.FactorSampler) and not isinstance(
                    value, (samplers.ConstantFactorSampler, GeneratorUniform, GeneratorNormal)):
                raise RuntimeError(f"{type(node).__name__}.{name} draws from a "
                                   f"{type(value).__name__}, which keras-mixer cannot seed.")

    visit(layer)

    def reseed(seed):
        for index, generator in enumerate(generators):
            generator.reset(tf.random.stateless_uniform(
                generator.state.shape, tf.random.experimental.stateless_fold_in(seed, index),
                minval=None, maxval=None, dtype=generator.state.dtype))

    return reseed
