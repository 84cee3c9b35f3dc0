"""The data benchmark (`keras-mixer benchmark data`): synthetic folders, its measurements on a tiny
folder, its report and targets, its command line (no timing asserts)."""

import hashlib
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_mixer import images
from keras_mixer.benchmark import data as data_benchmark
from keras_mixer.cli import command_parser
from keras_mixer.cli import benchmark as benchmark_cli

BACKEND_INDEPENDENT = True  # tf.data pipelines and files: the same under every backend


def test_synthetic_folder_files_differ_but_decode_alike(tmp_path):
    blobs = data_benchmark.distinct_jpegs(4, 16)
    root = str(tmp_path / "images")
    assert data_benchmark.write_folder(root, 30, 3, blobs) == 30
    assert sorted(os.listdir(root)) == ["c000", "c001", "c002"]
    paths = [os.path.join(root, c, n) for c in sorted(os.listdir(root))
             for n in sorted(os.listdir(os.path.join(root, c)))]
    contents = [open(p, "rb").read() for p in paths]
    assert len({hashlib.sha256(c).digest() for c in contents}) == 30  # 30 different files
    first = images.decode(tf.constant(contents[0])).numpy()
    np.testing.assert_array_equal(first, images.decode(tf.constant(blobs[0])).numpy())
    assert data_benchmark.needed_gb(10**6, blobs, True) > 10**6 * 4096 / 2**30


def test_measurements_on_a_tiny_folder(tmp_path):
    root = str(tmp_path / "images")
    data_benchmark.write_folder(root, 40, 2, data_benchmark.distinct_jpegs(3, 16))
    first = data_benchmark.start(root, 16, 4)
    assert (first["train"], first["test"]) == (36, 4) and first["load_splits_s"] > 0
    assert data_benchmark.start(root, 16, 4)["train"] == 36
    assert data_benchmark.decode_pass(root) > 0
    spec = data_benchmark.DataSpec(sizes=[40], classes=2, image_size=16, batch_size=4,
                                   pipeline_batches=2)
    assert data_benchmark.pipeline_rate(root, spec) > 0


def test_a_size_without_room_on_disk_is_skipped(tmp_path):
    spec = data_benchmark.DataSpec(sizes=[1000], work_dir=str(tmp_path), min_free_gb=10**9)
    row = data_benchmark.measure_size(1000, spec, data_benchmark.distinct_jpegs(2, 16),
                                      log=lambda line: None)
    assert "would leave less than" in row["skipped"] and not os.listdir(tmp_path)


def test_report_states_host_and_targets():
    host = data_benchmark.lscpu()
    assert host["model"] and host["cpus"] >= 1
    start = {"load_splits_s": 20.0, "process_s": 30.0, "first_batch_s": 1.0}
    report = {"date": "2026-01-01", "host": dict(host, flags=["avx2", "avx512f"]),
              "spec": data_benchmark.DataSpec(sizes=[10**6]).to_json(), "notes": [],
              "models": {"S/16": 20.0, "B/16": 5.0},
              "sizes": [{"images": 10**6, "generate_s": 100.0, "first_start": start,
                         "second_start": dict(start, load_splits_s=12.0), "decode_pass_s": 19.0,
                         "pipeline_img_s": 600.0, "prepare_s": 50.0, "records_start": start,
                         "records_pipeline_img_s": 500.0}]}
    text = data_benchmark.markdown(report)
    assert host["model"] in text and "avx2 avx512f" in text
    assert "| 1,000,000 |" in text
    assert "second start of the 1,000,000-image folder within 30 s: 12.0 s (met" in text
    assert "1.05 x the pass" in text
    assert "500 img/s vs 5.00 img/s (met, 100 x)" in text


def test_cli_parses_the_data_suite(capsys):
    parser = command_parser("benchmark")
    args = parser.parse_args(["data", "--sizes", "10000", "100000", "--model-steps", "0",
                              "--repeats", "1", "--no-records"])
    spec = benchmark_cli.spec_from_args(args)
    assert spec == data_benchmark.DataSpec(sizes=(10000, 100000), model_steps=0, repeats=1,
                                           records=False)
    assert args.out.startswith(os.path.join("benchmarks", "")) and args.out.endswith("-data")
    with pytest.raises(ValueError, match="at least 10 images per class"):
        data_benchmark.DataSpec(sizes=[50])
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "--help"])
    assert "--sizes" in capsys.readouterr().out
