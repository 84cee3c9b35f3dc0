"""preprocess_input and decode_predictions."""

import keras
import numpy as np
import pytest

import keras_mixer
from keras_mixer import imagenet

# Tests that behave the same under every Keras backend: scripts/test.sh runs them once.
BACKEND_INDEPENDENT = True

def run(model, inputs):
    """Inference outputs as NumPy (a direct call: no per-shape compilation as in predict)."""
    return keras.ops.convert_to_numpy(model(inputs, training=False))



def test_preprocess_input_maps_pixels_to_minus_one_one():
    pixels = np.array([0, 127.5, 255], "float32")
    np.testing.assert_allclose(keras_mixer.preprocess_input(pixels), [-1, 0, 1], atol=1e-7)
    np.testing.assert_allclose(keras_mixer.preprocess_input(pixels, mode="miil"), [0, 0.5, 1], atol=1e-7)
    assert keras_mixer.preprocess_input(np.zeros(2, "uint8")).dtype == np.float32
    with pytest.raises(ValueError, match="mode must be one of"):
        keras_mixer.preprocess_input(pixels, mode="caffe")


def test_preprocess_input_equals_the_models_built_in_scaling():
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype("float32")
    model = keras_mixer.MlpMixer(8, 1, 16, 8, 32, input_shape=(32, 32, 3), num_classes=3)
    built_in = run(model.get_layer("preprocessing"), images)
    np.testing.assert_allclose(keras_mixer.preprocess_input(images), built_in, rtol=1e-6, atol=1e-7)
    tensor_result = keras_mixer.preprocess_input(keras.ops.convert_to_tensor(images))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(tensor_result), built_in, atol=1e-6)


def test_shipped_class_names():
    ids, names = imagenet.imagenet1k_classes()
    assert len(ids) == len(set(ids)) == 1000 and len(names) == 1000
    assert (ids[0], names[0]) == ("n01440764", "tench, Tinca tinca")
    assert (ids[407], names[407]) == ("n02701002", "ambulance")
    assert names[-1] == "toilet tissue, toilet paper, bathroom tissue"


def test_decode_predictions_1k():
    preds = np.zeros((2, 1000), "float32")
    preds[0, [1, 407, 999]] = [0.2, 0.5, 0.3]
    preds[1, 0] = 1.0
    decoded = keras_mixer.decode_predictions(preds, top=3)
    assert decoded[0] == [("n02701002", "ambulance", 0.5),
                          ("n15075141", "toilet tissue, toilet paper, bathroom tissue", pytest.approx(0.3)),
                          ("n01443537", "goldfish, Carassius auratus", pytest.approx(0.2))]
    assert decoded[1][0][:2] == ("n01440764", "tench, Tinca tinca")


def test_decode_predictions_21k_gives_indices():
    preds = np.zeros((1, 21843), "float32")
    preds[0, 20000] = 3.0
    assert keras_mixer.decode_predictions(preds, top=1) == [[("20000", "20000", 3.0)]]
    with pytest.raises(ValueError, match="batch, num_classes"):
        keras_mixer.decode_predictions(np.zeros(1000))
