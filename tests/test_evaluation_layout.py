"""Every image's scores are the same on any layout of the evaluation.

Eval batch sizes 2 and 4, sample chunks 4 and 16, 1 and 8 devices, 1 and 2
processes: `driver.per_image_scores` derives each image's keys from its index
in the split and each sample's from its index among the image's samples, so
the same tiny HPU-Net scores the same six images identically every way.
"""
import os
import socket

import numpy as np
import pytest

from conftest import Started
import evaluation_worker

WORKER = os.path.join(os.path.dirname(__file__), "evaluation_worker.py")
TIMEOUT_S = 300


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run_workers(out, *args, num_processes=1):
  """The worker as a job of `num_processes` processes; process 0's scores."""
  port = _free_port()
  procs = []
  for process_id in range(num_processes):
    extra = ([f"--process_id={process_id}", f"--num_processes={num_processes}",
              f"--port={port}"] if num_processes > 1 else [])
    procs.append(Started([WORKER, f"--out={out}", *args, *extra]))
  try:
    outputs = [p.rest(timeout=TIMEOUT_S) for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, output in zip(procs, outputs):
    assert p.proc.returncode == 0, output[-4000:]
  return dict(np.load(out))


@pytest.fixture(scope="module")
def reference():
  """One device, eval batch 4 (a padded last batch of 2), chunk 16 (all samples at once)."""
  return evaluation_worker.scores(batch_size=4, sample_chunk=16)


def _assert_same(got, want):
  assert set(got) == set(want)
  for key in want:
    assert got[key].shape == want[key].shape == (evaluation_worker.NUM_IMAGES,), key
    # The binary samples are identical; S_NCC sums float32 probabilities over
    # chunks and devices in another order, so it agrees to float32 rounding.
    rtol = 1e-5 if key == "ncc" else 1e-6
    np.testing.assert_allclose(got[key], want[key], rtol=rtol, atol=1e-7, err_msg=key)


def test_the_reference_varies_between_images_and_samples(reference):
  # A scorer that ignored the keys would pass the layout tests trivially.
  assert np.ptp(reference["ged_16"]) > 0
  assert np.all(reference["diversity"] > 0)


@pytest.mark.parametrize("batch_size,sample_chunk",
                         [(2, 16), pytest.param(4, 4, marks=pytest.mark.slow),
                          pytest.param(2, 5, marks=pytest.mark.slow)])
def test_batch_size_and_chunk_change_no_score(reference, batch_size, sample_chunk):
  _assert_same(evaluation_worker.scores(batch_size=batch_size, sample_chunk=sample_chunk),
               reference)


@pytest.mark.slow
def test_eight_devices_give_the_scores_of_one(reference, tmp_path):
  # 4 images over 8 devices: each batch is padded to 8 and the padding dropped.
  _assert_same(_run_workers(tmp_path / "eight.npz", "--devices=8", "--sample_chunk=4"), reference)


@pytest.mark.slow
def test_two_processes_give_the_scores_of_one(reference, tmp_path):
  _assert_same(_run_workers(tmp_path / "two.npz", "--devices=2", "--batch_size=2", num_processes=2),
               reference)
