"""The benchmark script runs as docs/benchmarks.md shows and its profile summary is right."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import profile_summary
from conftest import run_cli


def test_profile_summary_tells_convolution_directions_apart(tmp_path):
  """Forward, input-gradient and weight-gradient convolutions each get their time."""
  def loss(x, w):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(jnp.tanh(y))

  step = jax.jit(jax.grad(loss, argnums=(0, 1)))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((4, 32, 32, 8)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 8, 8)), jnp.float32)
  compiled = step.lower(x, w).compile()
  jax.block_until_ready(compiled(x, w))
  with jax.profiler.trace(str(tmp_path)):
    for _ in range(2):
      jax.block_until_ready(compiled(x, w))
  per_step, total = profile_summary.summarise(
      profile_summary.latest_trace(str(tmp_path)), compiled.as_text(), steps=2)
  for kind in ("conv forward", "conv input gradient", "conv weight gradient"):
    assert per_step.get(kind, 0) > 0, (kind, per_step)
  assert set(per_step) <= set(profile_summary.KINDS)
  np.testing.assert_allclose(sum(per_step.values()), total)
  assert "conv weight gradient" in profile_summary.format_table(per_step, total)


def test_latest_trace_names_the_directory_without_a_trace(tmp_path):
  try:
    profile_summary.latest_trace(str(tmp_path))
  except FileNotFoundError as e:
    assert str(tmp_path) in str(e)
  else:
    raise AssertionError("no error for a directory without a trace")


@pytest.mark.slow
def test_throughput_script_prints_one_json_line_per_measurement(tmp_path):
  """The smoke command of docs/benchmarks.md: train, sampling and GED100 on the tiny network."""
  result = run_cli(
      "benchmarks.throughput", "--config=configs/synthetic.py:tiny",
      "--config.model.channels_per_block=(8,16,32,32)", "--config.model.latent_dims=(1,1)",
      "--size=16",
      "--batch=2", "--steps=1", "--repeats=1", "--warmup=1", "--num_images=2",
      "--what=train,sample16,ged100", f"--profile_dir={tmp_path}", timeout=600)
  lines = [json.loads(l) for l in result.stdout.splitlines() if l.startswith("{")]
  assert [l["what"] for l in lines] == ["train", "sample16", "ged100"]
  train, sample, ged = lines
  assert train["images_per_s"] > 0 and train["loss_finite"]
  assert train["config"] == "configs/synthetic.py:tiny" and train["compute_dtype"] == "float32"
  assert train["flops"] > 0 and 0 < train["fraction_of_peak"] < 1
  assert sample["samples_per_s"] > 0 and sample["num_samples"] == 16
  assert ged["est_s_for_1980_images"] > 0
  # The profile: the trace, the optimised HLO, and the summary table on stdout.
  assert os.path.exists(tmp_path / profile_summary.HLO_FILE)
  assert "op time per step (all threads)" in result.stdout


def test_paired_variants_parse_literals_and_name_bad_entries():
  from absl import app
  from benchmarks import paired
  assert paired.parse_variants(";model.gemm_weight_grad_sizes=(64, 32),model.remat=True") == [
      ("default", {}), ("model.gemm_weight_grad_sizes=(64, 32),model.remat=True",
                        {"model.gemm_weight_grad_sizes": (64, 32), "model.remat": True})]
  for bad, named in [("model.remat", "'model.remat' is not field=value"),
                     ("model.remat=yes", "'yes' (for model.remat) is not a Python literal")]:
    try:
      paired.parse_variants(bad)
    except app.UsageError as e:
      assert named in str(e), e
    else:
      raise AssertionError(f"no error for {bad!r}")


def test_paired_variants_reach_any_group_and_augmentation_feeds_source_sized_examples():
  from absl import app, flags
  from benchmarks import paired, throughput
  flags.FLAGS(["paired", "--config=configs/synthetic.py:tiny", "--size=16", "--augment_from=24"])
  try:
    on = paired.make_config({})
    off = paired.make_config({"data.augment.enabled": False, "remat": True})
    assert on.data.augment.enabled and throughput.input_size(on) == 24
    assert not off.data.augment.enabled and throughput.input_size(off) == 16
    assert off.execution.remat
    for bad, named in [({"data.bogus": 1}, "the config has no field 'data.bogus'"),
                       ({"nogroup.x": 1}, "the config has no group 'nogroup'")]:
      try:
        paired.make_config(bad)
      except app.UsageError as e:
        assert named in str(e), e
      else:
        raise AssertionError(f"no error for {bad}")
  finally:
    flags.FLAGS.unparse_flags()


@pytest.mark.slow
def test_ged100_on_eight_devices_reports_memory_that_grows_with_the_chunk():
  """`--what=ged100 --sample_chunks=...` on 8 host-platform devices: one line per chunk."""
  result = run_cli(
      "benchmarks.throughput", "--config=configs/synthetic.py:tiny",
      "--size=32", "--batch=8", "--repeats=1", "--num_images=8", "--what=ged100",
      "--sample_chunks=2,20", env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
      timeout=600)
  small, large = [json.loads(l) for l in result.stdout.splitlines() if l.startswith("{")]
  assert small["num_devices"] == large["num_devices"] == 8
  assert small["images_per_device"] == 1
  assert (small["sample_chunk"], large["sample_chunk"]) == (2, 20)
  assert small["images_per_s"] > 0 and large["images_per_s"] > 0
  assert small["xla_peak_mib"] < large["xla_peak_mib"]
