"""Every use of another library's private API, in one place, each behind a version guard.

Each entry names the upstream code it relies on, why no public API does the job,
and the versions it was checked against; ``tests/test_compat.py`` fails when the
upstream behaviour an entry relies on changes, so that the entry is revisited.
"""

KERAS_CV_CHECKED = ((0, 9), (0, 9))  # the keras-cv minor versions keras_cv_reseeder was checked on


def _version(module):
    return tuple(int(part) for part in module.__version__.split(".")[:2])


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
        RuntimeError: keras-cv is another version than the one checked, or the
            layer holds a random factor sampler of a kind not handled here.
    """
    import keras
    import keras_cv
    import tensorflow as tf

    low, high = KERAS_CV_CHECKED
    if not low <= _version(keras_cv) <= high:
        raise RuntimeError(
            f"keras-cv {keras_cv.__version__} is not a version whose random state keras-mixer "
            f"knows how to seed (checked: {'.'.join(map(str, low))}); install keras-cv "
            f"{'.'.join(map(str, low))} or turn RandAugment off (--randaug-magnitude 0).")
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
