"""keras_mixer.compat: each private API it reaches still behaves as the entry says, on the
installed releases; an upgrade that changes one fails here (move compat.VERIFIED once checked)."""

import numpy as np
import pytest
import tensorflow as tf

from keras_mixer import compat, data


@pytest.mark.parametrize("library", sorted(compat.VERIFIED))
def test_installed_releases_are_the_verified_ones(library):
    pytest.importorskip(library)
    assert compat.verified(library), (
        f"{library} {compat.version(library)} is not in compat.VERIFIED: check every entry of "
        "keras_mixer/compat.py against it, then add it.")


def test_keras_cv_randaugment_is_a_pure_function_of_the_reseed():
    """keras-cv's RandAugment, reseeded before each call, gives the same output for the same
    seed whatever it drew before, and another one for another seed (keras-cv 0.9: per-layer
    tf.random.Generators and FactorSamplers; a new random state there breaks this)."""
    layer = data.rand_augment(ops=2, magnitude=10.0, seed=0)
    reseed = compat.keras_cv_reseeder(layer)
    images = tf.random.stateless_uniform((4, 16, 16, 3), (1, 2), maxval=255.0)

    @tf.function
    def augment(seed):
        reseed(seed)
        return layer(images)

    first = augment(tf.constant([3, 4], tf.int64)).numpy()
    for seed in ([7, 7], [3, 5], [0, 4]):
        augment(tf.constant(seed, tf.int64))  # draws in between
    np.testing.assert_array_equal(augment(tf.constant([3, 4], tf.int64)).numpy(), first)
    assert not np.array_equal(augment(tf.constant([3, 5], tf.int64)).numpy(), first)
    assert not np.array_equal(first, images.numpy())
