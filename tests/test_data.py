"""Input pipelines: shapes, ranges, determinism, MixUp/CutMix, folder and TFDS sources, errors."""

import os
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from helpers.folders import count_decodes, random_classes, write_image_folder
from helpers.tiny import SHARED_DATA
from keras_mixer import data
from keras_mixer import images as image_policy

# Tests that behave the same under every Keras backend: scripts/test.sh runs them once.
BACKEND_INDEPENDENT = True

CIFAR_TAR = os.path.join(SHARED_DATA, "cifar10-jpg", "cifar10-jpg.tar.gz")


def first_batch(dataset):
    images, labels = next(iter(dataset))
    return images.numpy(), labels.numpy()


def test_digits_source_is_real_and_split():
    train, test = data.load_source("digits", "train"), data.load_source("digits", "test")
    assert (train.num_examples, test.num_examples) == (1438, 359)  # sklearn's 1,797 digits
    assert train.class_names == [str(i) for i in range(10)]
    image, label = next(iter(train.dataset))
    assert image.shape == (8, 8, 3) and image.dtype == tf.uint8 and 0 <= int(label) < 10


@pytest.mark.parametrize("training", [True, False])
def test_batches_shapes_and_ranges(training):
    source = data.load_source("digits", "test")
    augment = data.Augmentation(flip=True, mixup_alpha=0.2)
    images, labels = first_batch(data.make_dataset(source, 16, 24, training, augment, seed=3))
    assert images.shape == (16, 24, 24, 3) and images.dtype == np.float32
    assert labels.shape == (16, 10) and labels.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 255 and images.max() > 100
    np.testing.assert_allclose(labels.sum(-1), 1.0, atol=1e-6)


def test_eval_pipeline_keeps_every_example_in_order():
    source = data.load_source("digits", "test")
    batches = list(data.make_dataset(source, 100, 8, training=False))
    assert sum(len(x) for x, _ in batches) == 359
    raw = np.stack([x.numpy() for x, _ in source.dataset.take(100)]).astype("float32")
    np.testing.assert_allclose(batches[0][0].numpy(), raw, atol=1e-3)  # 8 -> 8: identity


def test_training_pipeline_is_deterministic_per_seed_and_varies_per_epoch():
    source = data.load_source("digits", "test")
    augment = data.Augmentation(flip=True, mixup_alpha=0.2, cutmix_alpha=1.0)

    def two_epochs(seed):
        dataset = data.make_dataset(source, 32, 16, True, augment, seed=seed)
        return [first_batch(dataset) for _ in range(2)]

    (a0, la0), (a1, _) = two_epochs(7)
    (b0, lb0), (b1, _) = two_epochs(7)
    np.testing.assert_array_equal(a0, b0)
    np.testing.assert_array_equal(la0, lb0)
    np.testing.assert_array_equal(a1, b1)
    assert not np.array_equal(a0, a1)  # a new epoch reshuffles and re-augments
    (c0, _), _ = two_epochs(8)
    assert not np.array_equal(a0, c0)


def test_training_stream_started_at_a_batch_is_the_rest_of_the_stream():
    """A repeated training pipeline (a run's) is a pure function of the seed and the batch index:
    started at batch k (a resumed run) it yields batches k, k+1, ... of the stream from 0, every
    augmentation included, also across passes over the data; passes differ."""
    source = data.load_source("digits", "test")  # 359 examples: a pass is 11.2 batches of 32
    augment = data.Augmentation(flip=True, randaug_magnitude=10, mixup_alpha=0.2, cutmix_alpha=1.0)

    def batches(start, count):
        dataset = data.make_dataset(source, 32, 8, True, augment, seed=5, repeat=True,
                                    start_batch=start)
        return [(x.numpy(), y.numpy()) for x, y in dataset.take(count)]

    stream = batches(0, 26)
    for start in (7, 23):  # within the first pass; in the third
        for (x, y), (want_x, want_y) in zip(batches(start, 3), stream[start:start + 3], strict=True):
            np.testing.assert_array_equal(x, want_x)
            np.testing.assert_array_equal(y, want_y)
    assert not np.array_equal(stream[0][0], stream[11][0])


@pytest.mark.parametrize("mixup_alpha, cutmix_alpha", [(0.4, 0.0), (0.0, 1.0), (0.2, 1.0)])
def test_mixed_labels_sum_to_one_and_match_the_pair(mixup_alpha, cutmix_alpha):
    images = tf.random.stateless_uniform((8, 16, 16, 3), (1, 2), maxval=255.0)
    labels = tf.one_hot(tf.range(8) % 10, 10)
    for i in range(5):
        mixed, soft = data.mix_batch(images, labels, tf.constant([i, 9]),
                                                 mixup_alpha, cutmix_alpha)
        soft = soft.numpy()
        np.testing.assert_allclose(soft.sum(-1), 1.0, atol=1e-6)
        lam = soft[0, 0]  # example 0 (class 0) is mixed with example 7 (class 7)
        np.testing.assert_allclose(soft[0, 7], 1 - lam, atol=1e-6)
        if not cutmix_alpha:
            np.testing.assert_allclose(mixed.numpy()[0], lam * images[0] + (1 - lam) * images[7],
                                       rtol=1e-5, atol=1e-3)
        if not mixup_alpha:  # CutMix: the label weight is the pasted area
            from_self = np.isclose(mixed.numpy()[0], images.numpy()[0]).all(-1).mean()
            np.testing.assert_allclose(from_self, lam, atol=1e-6)


def test_inception_crop_and_randaugment_keep_shape_and_range():
    source = data.load_source("digits", "test")
    augment = data.Augmentation(crop_min_area=0.08, flip=True, randaug_magnitude=10)
    images, _ = first_batch(data.make_dataset(source, 8, 16, True, augment, seed=0))
    assert images.shape == (8, 16, 16, 3) and images.min() >= 0 and images.max() <= 255


def test_shards_partition_the_data():
    shards = [data.load_source("digits", "test", shard=(2, i)) for i in range(2)]
    assert sum(s.num_examples for s in shards) == 359
    labels = [[int(y) for _, y in s.dataset] for s in shards]
    full = [int(y) for _, y in data.load_source("digits", "test").dataset]
    assert labels[0] == full[0::2] and labels[1] == full[1::2]


@pytest.mark.parametrize("cache", [False, True])
def test_each_process_decodes_only_its_share_of_every_batch(tmp_path, cache):
    """Two shards (processes): each checks and decodes only its own 8 of the 16 images, and
    together they make the batches of the whole split."""
    write_image_folder(str(tmp_path / "f" / "train"), random_classes(16, num_classes=2, size=8))
    root = str(tmp_path / "f")
    shards = []
    for index in range(2):
        with count_decodes() as decoded:
            shard = data.load_source(root, "train", shard=(2, index))
        assert decoded[0] == 8 and shard.num_examples == 8 and shard.total_examples == 16
        with count_decodes() as decoded:
            batches = list(data.make_dataset(shard, 4, 8, True, data.Augmentation(), cache=cache))
            list(data.make_dataset(shard, 4, 8, False, cache=cache))
        assert decoded[0] == 8 + 8 and len(batches) == 2  # an epoch of each pipeline: its 8
        shards.append(shard)
    everything = data.load_source(root, "train")
    pixels = [np.stack([x.numpy() for x, _ in s.images()]) for s in [everything] + shards]
    np.testing.assert_array_equal(np.sort(pixels[0], axis=0),
                                  np.sort(np.concatenate(pixels[1:]), axis=0))


def test_eval_shards_pad_to_the_same_batches_and_weigh_like_one_device():
    shards = [data.load_source("digits", "test", shard=(2, i)) for i in range(2)]
    assert [s.total_examples for s in shards] == [359, 359]
    weights = []
    for shard in shards:
        batches = list(data.make_dataset(shard, 8, 8, training=False, pad_to_batch=True))
        assert len(batches) == 23  # ceil(359 / 16) global batches of 16: 2 x 8
        weights.append(np.concatenate([w.numpy() for _, _, w in batches]))
    weights = np.concatenate(weights)
    assert (weights > 0).sum() == 359
    np.testing.assert_allclose(weights[weights > 0], 368 / 359, rtol=1e-6)  # as one device


def write_folder(root, classes=("cat", "dog"), per_class=3, size=20):
    rng = np.random.default_rng(0)
    for name in classes:
        os.makedirs(os.path.join(root, name))
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size + 4, 3)).astype("uint8")
            encoded = tf.io.encode_png(pixels) if i % 2 else tf.io.encode_jpeg(pixels)
            tf.io.write_file(os.path.join(root, name, f"{i}.{'png' if i % 2 else 'jpg'}"), encoded)


def test_image_folder_source(tmp_path):
    root = str(tmp_path / "pets")
    write_folder(os.path.join(root, "train"))
    write_folder(os.path.join(root, "test"), per_class=2)
    train = data.load_source(root, "train")
    assert train.class_names == ["cat", "dog"] and train.num_examples == 6
    assert data.load_source(root, "test").num_examples == 4
    images, labels = first_batch(data.make_dataset(train, 6, 16, training=False))
    assert images.shape == (6, 16, 16, 3)
    np.testing.assert_array_equal(np.sort(labels.argmax(-1)), [0, 0, 0, 1, 1, 1])
    test_images, test_labels = first_batch(
        data.make_dataset(data.load_source(root, "test"), 4, 16, training=False))
    np.testing.assert_array_equal(test_labels.argmax(-1), [0, 0, 1, 1])  # eval keeps file order
    # Evaluation prepares a file exactly as the image policy (and so the serving signatures) do.
    path = os.path.join(root, "test", "cat", "0.jpg")
    np.testing.assert_allclose(test_images[0], image_policy.load_files([path], (16, 16))[0], atol=1e-4)
    cropped = first_batch(data.make_dataset(data.load_source(root, "test"), 4, 16, training=False,
                                            crop_fraction=0.5))[0]
    np.testing.assert_allclose(cropped[0], image_policy.load_files([path], (16, 16), 0.5)[0], atol=1e-4)
    assert not np.allclose(cropped[0], test_images[0], atol=1.0)


def test_folder_without_splits_holds_out_every_tenth_image(tmp_path):
    write_folder(str(tmp_path), per_class=10)
    assert data.load_source(str(tmp_path), "train").num_examples == 18
    assert data.load_source(str(tmp_path), "test").num_examples == 2


def test_empty_folder_error(tmp_path):
    os.makedirs(tmp_path / "cat")
    with pytest.raises(ValueError, match="has no images"):
        data.load_source(str(tmp_path), "train")


def test_undecodable_images_are_skipped_or_refused_before_any_batch(tmp_path):
    """Valid headers, corrupt bodies: found by the pipeline's own decoder, all of them, up front."""
    root = tmp_path / "pets"
    write_folder(str(root / "train"))
    write_folder(str(root / "test"), per_class=2)
    good_png = (root / "train" / "cat" / "1.png").read_bytes()
    good_jpg = (root / "train" / "cat" / "0.jpg").read_bytes()
    (root / "train" / "cat" / "truncated.png").write_bytes(good_png[:len(good_png) // 2])
    (root / "train" / "dog" / "corrupt.jpg").write_bytes(good_jpg[:20] + bytes(range(256)) * 2)
    (root / "test" / "dog" / "text.jpg").write_bytes(b"this is not an image")
    train = data.load_source(str(root), "train")  # default: skip and report
    assert train.num_examples == 6
    assert sorted(os.path.basename(p) for p, _ in train.unreadable) == ["corrupt.jpg", "truncated.png"]
    assert all(reason for _, reason in train.unreadable)
    assert sum(1 for _ in train.images()) == 6  # the pipeline reads every file it kept
    test = data.load_source(str(root), "test", class_names=train.class_names)
    assert test.num_examples == 4 and [os.path.basename(p) for p, _ in test.unreadable] == ["text.jpg"]
    with pytest.raises(ValueError, match="2 of 8 images") as error:
        data.load_source(str(root), "train", bad_images="fail")
    assert "truncated.png" in str(error.value) and "corrupt.jpg" in str(error.value)
    with pytest.raises(ValueError, match="bad_images must be one of skip, fail"):
        data.load_source(str(root), "train", bad_images="ignore")


def test_splits_must_have_the_training_classes(tmp_path):
    root = tmp_path / "colors"
    write_folder(str(root / "train"), classes=("gray", "green", "red"), per_class=1)
    write_folder(str(root / "test"), classes=("green", "red"), per_class=1)
    with pytest.raises(ValueError, match=r"colors/test' differ .*missing gray"):
        data.load_splits(str(root))
    write_folder(str(root / "test"), classes=("gray", "blue"), per_class=1)  # test: blue gray green red
    with pytest.raises(ValueError, match="not in the training split: blue"):
        data.load_splits(str(root))
    os.makedirs(root / "train" / "pink")
    with pytest.raises(ValueError, match=r"Class folders without images.*pink"):
        data.load_source(str(root), "train")
    single = tmp_path / "single"
    write_folder(str(single / "train"), classes=("cat",), per_class=1)
    write_folder(str(single / "test"), classes=("cat",), per_class=1)
    with pytest.raises(ValueError, match="at least 2 classes"):
        data.load_splits(str(single))
    train, test = data.load_splits("digits")
    assert train.class_names == test.class_names


def test_missing_folder_and_unknown_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_source(str(tmp_path / "nope") + os.sep, "train")
    with pytest.raises(ValueError, match="Unknown dataset 'no_such_dataset_xyz'"):
        data.load_source("no_such_dataset_xyz", "train")


def test_tfds_source_through_mock_data(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(data, "network_problem", lambda: None)  # the mock "downloads" offline
    with tfds.testing.mock_data(num_examples=12):
        source = data.load_source("cifar10", "test")
        assert source.num_examples == 12 and len(source.class_names) == 10
        images, labels = first_batch(data.make_dataset(source, 4, 16, training=False))
    assert images.shape == (4, 16, 16, 3) and labels.shape == (4, 10)


def test_tfds_download_failure_says_how_to_prepare(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("no internet")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    monkeypatch.setattr(data, "network_problem", lambda: None)  # online, but the download fails
    with pytest.raises(data.DatasetUnavailableError,
                       match="tfds.builder.'cifar10'.*download_and_prepare") as error:
        data.load_source("cifar10", "train", data_dir=str(tmp_path))
    assert data.prepare_command("cifar10") in str(error.value)


def test_tfds_prepare_advice_runs(tmp_path, monkeypatch):
    """The advised command prepares the data with what setup.cfg installs (no apache-beam)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    calls = []
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                        lambda self, *a, **k: calls.append(self.data_dir))
    code = data.prepare_command("cifar10", str(tmp_path)).split('"')[1]
    exec(code, {})
    assert calls and calls[0].startswith(str(tmp_path))
    # What download_and_prepare needs beyond the mock: TFDS's resource lookups
    # (importlib_resources), which a fresh install lacked.
    assert tfds.builder("cifar10", data_dir=str(tmp_path)).code_path


@pytest.mark.skipif(not os.path.exists(CIFAR_TAR), reason="shared CIFAR-10 tar not present")
def test_cifar10_jpeg_folder(tmp_path):
    """Real JPEGs: the first 20 test images of two classes from the shared CIFAR-10 tar."""
    wanted = {"airplane", "cat"}
    with tarfile.open(CIFAR_TAR) as tar:
        members = []
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and "test" in parts and parts[-2] in wanted:
                if sum(m.name.split("/")[-2] == parts[-2] for m in members) < 20:
                    members.append(member)
            if len(members) == 40:
                break
        tar.extractall(tmp_path, members=members, filter="data")
    source = data.load_source(str(tmp_path), "test")  # finds tmp_path/test/<class>/
    assert source.class_names == ["airplane", "cat"] and source.num_examples == 40
    images, labels = first_batch(data.make_dataset(source, 40, 32, training=False))
    assert images.shape == (40, 32, 32, 3) and 0 <= images.min() and images.max() <= 255
    assert labels.sum(0).tolist() == [20.0, 20.0]


def test_eval_padding_fills_batches_with_zero_weight_blanks():
    source = data.load_source("digits", "test")
    batches = list(data.make_dataset(source, 64, 8, training=False, pad_to_batch=True))
    assert all(len(x) == 64 for x, _, _ in batches) and len(batches) == 6  # 359 -> 384
    weights = np.concatenate([w.numpy() for _, _, w in batches])
    # Real examples weigh 384/359: Keras' loss divides by the padded count (see make_dataset).
    np.testing.assert_allclose(weights[:359], 384 / 359, rtol=1e-6)
    assert (weights[359:] == 0).all()
