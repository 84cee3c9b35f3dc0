"""The bad-image check is paid once: remembered per file (path, size, modification time)."""

import json
import os

import numpy as np
import pytest
from helpers.folders import count_decodes, random_classes, write_image_folder

from keras_mixer import data, files, image_check

BACKEND_INDEPENDENT = True  # tf.data pipelines and files: the same under every backend


@pytest.fixture
def folder(tmp_path):
    """``train/`` with 8 PNG images in 2 classes and one corrupt JPEG; ``test/`` with 2."""
    root = tmp_path / "pets"
    write_image_folder(str(root / "train"), random_classes(8, num_classes=2, size=16))
    write_image_folder(str(root / "test"), random_classes(2, num_classes=2, size=16, seed=1))
    (root / "train" / "c1" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff" + bytes(range(256)))
    return root


def load(root, **kwargs):
    with count_decodes() as decoded:
        source = data.load_source(str(root), "train", **kwargs)
    return source, decoded[0]


def cache_files(root):
    beside, _ = image_check.cache_folders(str(root / "train"))
    return sorted(os.path.join(beside, n) for n in os.listdir(beside))


def test_second_start_decodes_nothing(folder):
    first, decoded = load(folder)
    assert decoded == 9 + 1  # every file, then the corrupt one again for its reason
    assert first.num_examples == 8
    second, decoded = load(folder)
    assert decoded == 0
    assert second.unreadable == first.unreadable  # the remembered reason
    assert [os.path.basename(p) for p, _ in second.unreadable] == ["corrupt.jpg"]
    assert second.unreadable[0][1] and second.num_examples == 8
    # "fail" refuses the remembered bad file as it refuses a freshly found one.
    with pytest.raises(ValueError, match="(?s)1 of 9 images .*corrupt.jpg"):
        load(folder, bad_images="fail")


def test_a_changed_file_is_checked_again(folder):
    load(folder)
    image = folder / "train" / "c0" / "000.png"
    stat = os.stat(image)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: new mtime
    source, decoded = load(folder)
    assert decoded == 1 and source.num_examples == 8
    # Broken in place, its modification time put back: the size differs, so it is checked.
    stat = os.stat(image)
    image.write_bytes(image.read_bytes()[:40])
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    source, decoded = load(folder)
    assert decoded == 1 + 1  # checked, then decoded again for its reason
    assert sorted(os.path.basename(p) for p, _ in source.unreadable) == ["000.png", "corrupt.jpg"]
    source, decoded = load(folder)
    assert decoded == 0 and source.num_examples == 7


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other decoder", "wrong lengths"])
def test_a_torn_or_foreign_cache_file_is_ignored(folder, damage):
    load(folder)
    path, = cache_files(folder)
    text = open(path).read()
    content = json.loads(text)
    if damage == "truncated":
        text = text[:len(text) // 2]
    elif damage == "garbage":
        text = "\x00\xff not json"
    elif damage == "other decoder":
        text = json.dumps(dict(content, decoder="another decoder"))
    else:
        text = json.dumps(dict(content, sizes=content["sizes"][:-1]))
    with open(path, "w") as f:
        f.write(text)
    # A killed writer's temporary file lies beside it: never read, removed by the next write.
    dead = files.temp_prefix().replace(f"p{os.getpid()}h", "p999999999h")  # a dead process here
    stale = os.path.join(os.path.dirname(path), dead + os.path.basename(path))
    with open(stale, "w") as f:
        f.write("{")
    source, decoded = load(folder)
    assert decoded == 9 + 1 and source.num_examples == 8
    assert [os.path.basename(p) for p, _ in source.unreadable] == ["corrupt.jpg"]
    assert cache_files(folder) == [path]  # rewritten whole; the stale temporary file is gone
    assert image_check.read_cache(str(folder / "train"))
    assert load(folder)[1] == 0


def test_each_shard_checks_only_its_files_and_their_results_add_up(folder):
    """Processes of one job check their own shards (writing side by side); a later run with
    another number of processes finds every result."""
    shards = [load(folder, shard=(2, index)) for index in range(2)]
    assert [decoded for _, decoded in shards] in ([5 + 1, 4], [5, 4 + 1])
    assert len(cache_files(folder)) == 2
    assert sum(source.num_examples for source, _ in shards) == 8
    assert all(source.total_examples == 9 for source, _ in shards)  # found before the check
    whole, decoded = load(folder)
    assert decoded == 0 and whole.num_examples == 8 and whole.total_examples == 8
    paths = sorted(p for source, _ in shards for p in _paths(source))
    assert paths == sorted(_paths(whole))


def _paths(source):
    return [p.decode() for p, _ in source.dataset.as_numpy_iterator()]


def test_read_only_folder_keeps_results_in_the_user_cache(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    writable = os.access
    monkeypatch.setattr(image_check.os, "access",
                        lambda path, mode: False if str(folder) in str(path) else writable(path, mode))
    assert load(folder)[1] == 10
    beside, user = image_check.cache_folders(str(folder / "train"))
    assert not os.path.exists(beside) and os.listdir(user)
    assert user.startswith(str(tmp_path / "keras-home"))
    assert load(folder)[1] == 0


def test_find_unreadable_reads_every_file_once_in_order(tmp_path):
    root = write_image_folder(str(tmp_path / "f"), random_classes(5, num_classes=1, size=8))
    paths = sorted(os.path.join(root, "c0", n) for n in os.listdir(os.path.join(root, "c0")))
    with open(paths[2], "wb") as f:
        f.write(b"GIF89a broken")
    with count_decodes() as decoded:
        found = image_check.find_unreadable(paths)
    assert [p for p, _ in found] == [paths[2]] and decoded[0] == 5 + 1
    assert np.all([reason for _, reason in found])


def test_a_killed_check_keeps_what_it_had_found(folder, monkeypatch):
    """A long check saves as it goes: killed half way, the next start decodes only the rest."""
    monkeypatch.setattr(image_check, "SAVE_EVERY_S", -1.0)  # save after every batch
    monkeypatch.setattr(image_check, "BATCH", 2)
    decode_all = image_check.decode_all

    def killed_after_two_batches(paths, readable):
        for batch, done in enumerate(decode_all(paths, readable)):
            if batch == 2:
                raise KeyboardInterrupt
            yield done

    monkeypatch.setattr(image_check, "decode_all", killed_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        load(folder)
    monkeypatch.setattr(image_check, "decode_all", decode_all)
    source, decoded = load(folder)
    assert decoded <= 9 - 3 + 1  # at least 3 of the first 4 files were readable, and kept
    assert source.num_examples == 8
    assert [os.path.basename(p) for p, _ in source.unreadable] == ["corrupt.jpg"]
    assert load(folder)[1] == 0
