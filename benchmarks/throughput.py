r"""Throughput of the HPU-Net training step and of sampling, on fake data.

    python -m benchmarks.throughput --batch=8 --size=128 --steps=5 \
        --what=train,sample16,sample100 [--workdir=DIR | --config=configs/lidc.py] \
        [--config.execution.compute_dtype=bfloat16]

prints one JSON line per measurement (`--what` entry): step time, throughput
(`images_per_s` for training, `samples_per_s` for sampling), compile time
(`lower` and `compile` timed apart from the runs), XLA's FLOP count of the
compiled program and the achieved FLOP/s against an estimate of the machine's
peak, peak memory, and the machine, JAX version, batch, size and dtype.

Modes:
  train      the jitted `make_train_step(config)` (GECO, top-k, L2, Adam), state
             donated, after `--warmup` steps; `--steps` timed steps per repeat.
             With `--augment_from=180` the step includes the LIDC recipe's
             on-device augmentation of 180x180 examples to `--size` crops.
  sample16   `make_model(cfg).sample(params, rng, images, num_samples=16)`.
  sample100  the same with 100 samples (the GED100 evaluation's sampling).
  ged100     the evaluation's device function (100 samples per image drawn in
             chunks of each `--sample_chunks` value, reconstructions, IoU
             matrices) and the host's GED against 4 fake graders for
             `--num_images` images in global batches of `--batch` sharded over
             all devices; reports images/s, the time extrapolated to the 1980
             LIDC test images and XLA's planned peak memory per device.

Each timed measurement is repeated `--repeats` times and the best repeat is
reported (`step_s`, the throughput) next to the median (`step_s_median`): the
development machines are shared, and the best repeat is the least disturbed.

The model is that of a run (`--workdir=DIR`: its `config.json`), of a config
file (`--config=configs/x.py`, e.g. `configs/synthetic.py:tiny`, a small
network for smoke tests), or by default the LIDC setting
(`config_lib.base_config()`); `--config.<group>.<field>=value` overrides any
field (`experiments/run_flags.py`), e.g. `--config.execution.compute_dtype=bfloat16`
or `--config.execution.remat=True`. `--batch` and `--size` set the measured shape
(`train.batch_size`, `data.crop_size`).

Peak FLOP/s: on GPU from the device kind (dense bf16 / f32 tensor-core peaks
of the data sheets); on CPU an *estimate*: cores x clock x FLOPs per cycle
(two FMA units x SIMD width x 2, i.e. 64 f32 FLOPs/cycle with AVX-512, 32
with AVX2), the clock read from /proc/cpuinfo. The 'flops' of XLA's cost
analysis count a multiply-add as 2.
"""
import json
import os
import platform
import resource
import statistics
import time

from absl import app, flags
from ml_collections import config_flags

import jax
import jax.numpy as jnp
import numpy as np

from experiments import cli, run_flags
import hpunet_jax
from hpunet_jax import config_lib
from hpunet_jax.evaluation import metrics, sampling, scorers
from hpunet_jax.infra import parallel
from hpunet_jax.data import augment

from benchmarks import profile_summary

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 8, "Global batch size (images per step / per sampling call).")
flags.DEFINE_integer("size", 128, "Image height and width.")
flags.DEFINE_integer("steps", 5, "Timed steps (or sampling calls) per repeat.")
flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
flags.DEFINE_integer("repeats", 3, "Repeats of the timed loop; the best one is reported.")
flags.DEFINE_list("what", ["train"], "Measurements: train, sample16, sample100, ged100.")
flags.DEFINE_integer("num_images", 32, "ged100: images to evaluate (LIDC test split: 1980).")
flags.DEFINE_bool("memory_only", False, "ged100: compile and report XLA's planned memory "
                  "only, without running (the full model on a CPU).")
flags.DEFINE_list("sample_chunks", ["10"], "ged100: the eval.sample_chunk values to measure "
                  "(one line each).")
flags.DEFINE_string("profile_dir", None, "If set, write a jax.profiler trace of the timed "
                    "training steps there (view with TensorBoard / Perfetto) with the "
                    "optimised HLO, and print the op time by kind (benchmarks.profile_summary).")
flags.DEFINE_integer("seed", 0, "Seed of the fake data and the parameters.")
flags.DEFINE_integer("augment_from", None, "The LIDC recipe: fake examples of this size "
                     "(LIDC: 180) are augmented on device inside the train step and cut to "
                     "--size (data.augment.enabled); unset: examples of --size, no augmentation.")

# Dense peaks (FLOP/s) by device kind: (bf16, f32). Data sheets; f32 on
# NVIDIA is the TF32 tensor-core rate, which XLA uses for f32 convs by default.
GPU_PEAKS = {
    "H200": (989e12, 494e12),
    "H100 80GB HBM3": (989e12, 494e12),   # SXM
    "H100 SXM": (989e12, 494e12),
    "H100 PCIe": (756e12, 378e12),
    "H100": (989e12, 494e12),
    "A100": (312e12, 156e12),
    "L4": (121e12, 60e12),
    "V100": (125e12, 15.7e12),
}


def cpu_model():
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def cpu_peak_flops():
  """(FLOP/s estimate, how it was estimated) for float32 on this CPU."""
  cores = len(os.sched_getaffinity(0))
  mhz, cpu_flags = None, set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("cpu MHz") and mhz is None:
          mhz = float(line.split(":")[1])
        elif line.startswith("flags") and not cpu_flags:
          cpu_flags = set(line.split(":")[1].split())
  except OSError:
    pass
  mhz = mhz or 2000.0
  if "avx512f" in cpu_flags:
    per_cycle, isa = 64, "AVX-512"
  elif "avx2" in cpu_flags and "fma" in cpu_flags:
    per_cycle, isa = 32, "AVX2+FMA"
  else:
    per_cycle, isa = 8, "SSE"
  how = (f"estimate: {cores} cores x {mhz / 1000:.2f} GHz x {per_cycle} f32 FLOPs/cycle "
         f"({isa}, 2 FMA units)")
  return cores * mhz * 1e6 * per_cycle, how


def machine_info():
  device = jax.devices()[0]
  import jaxlib  # pylint: disable=import-outside-toplevel
  info = dict(platform=device.platform, device_kind=device.device_kind,
              num_devices=jax.device_count(), jax=jax.__version__, jaxlib=jaxlib.__version__)
  if device.platform == "cpu":
    peak, how = cpu_peak_flops()
    info.update(machine=cpu_model(), cores=len(os.sched_getaffinity(0)), peak_flops=peak,
                peak_flops_how=how)
  else:
    kind = device.device_kind
    peaks = next((v for k, v in GPU_PEAKS.items() if k in kind), None)
    bf16 = CONFIG_SOURCE["compute_dtype"] == "bfloat16"
    info.update(machine=kind,
                peak_flops=None if peaks is None else
                jax.device_count() * (peaks[0] if bf16 else peaks[1]),
                peak_flops_how="data sheet, dense " + ("bf16" if bf16 else "tf32/f32"))
  if os.environ.get("XLA_FLAGS"):
    info["xla_flags"] = os.environ["XLA_FLAGS"]
  return info


# Where the config came from and its dtype, for the report lines.
CONFIG_SOURCE = {}


def make_config():
  """The flags' config (a run's, a file's, or the LIDC setting) at the measured shape."""
  config = run_flags.config(workdir_required=False)
  CONFIG_SOURCE.update(
      config=(f"workdir:{run_flags.WORKDIR.value}" if run_flags.WORKDIR.value and
              not FLAGS["config"].present else
              config_flags.get_config_filename(FLAGS["config"]) if FLAGS["config"].present
              else "base_config"),
      compute_dtype=config.execution.compute_dtype, remat=config.execution.remat)
  config.train.batch_size = FLAGS.batch
  config.data.crop_size = FLAGS.size
  config.data.image_size = FLAGS.size
  if FLAGS.augment_from is not None:
    config.data.image_size = FLAGS.augment_from
    config.data.augment.enabled = True
  config_lib.validate(config)
  return config


def input_size(config):
  """Side of the fake examples: the uncropped source when augmenting, else the crop."""
  return config.data.image_size if augment.enabled(config.data) else config.data.crop_size


def fake_batch(config, batch_size, size, seed):
  rng = np.random.default_rng(seed)
  image = rng.random((batch_size, size, size, config.data.num_channels), np.float32)
  labels = rng.random((batch_size, size, size)) > 0.9
  seg = np.eye(config.model.num_classes, dtype=np.float32)[labels.astype(np.int64)]
  return {"image": image, "segmentation": seg}


def peak_memory():
  """Peak memory: the device's peak on GPU, the process's max RSS on CPU (MiB)."""
  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and "peak_bytes_in_use" in stats:
    return dict(peak_device_mib=round(stats["peak_bytes_in_use"] / 2**20, 1))
  # ru_maxrss is in KiB on Linux; it is the process's peak so far (not per mode).
  return dict(peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))


def compile_stats(jitted, *args, **kwargs):
  """Lowers and compiles apart from running; returns (compiled, stats dict)."""
  t0 = time.perf_counter()
  lowered = jitted.lower(*args, **kwargs)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  stats = dict(lower_s=round(t1 - t0, 3), compile_s=round(t2 - t1, 3))
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  stats["flops"] = float(cost.get("flops", 0.0)) if cost else None
  try:
    mem = compiled.memory_analysis()
    stats["xla_temp_mib"] = round(mem.temp_size_in_bytes / 2**20, 1)
  except Exception:  # pylint: disable=broad-except
    pass
  return compiled, stats


def _cpu_seconds():
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def timed_repeats(run_once, steps, repeats):
  """Best and median seconds per call over `repeats` loops of `steps` calls.

  Also returns the process's CPU time per call and CPU time / wall time over
  all repeats (how many cores the program kept busy on average; on a shared
  machine other processes' load lowers it). CPU time per call is the steadier
  number when other processes compete for the cores.
  """
  per_call = []
  wall0, cpu0 = time.perf_counter(), _cpu_seconds()
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(steps):
      run_once()
    per_call.append((time.perf_counter() - t0) / steps)
  cpu = _cpu_seconds() - cpu0
  busy = cpu / (time.perf_counter() - wall0)
  return min(per_call), statistics.median(per_call), dict(
      cores_busy=round(busy, 2), cpu_s_per_step=round(cpu / (steps * repeats), 4))


def report(name, info, stats, step_s, median_s, work, unit, **extra):
  line = dict(what=name, **{k: info[k] for k in ("machine", "platform", "jax", "jaxlib")},
              batch=FLAGS.batch, size=FLAGS.size, **CONFIG_SOURCE,
              step_s=round(step_s, 5), step_s_median=round(median_s, 5),
              **{unit: round(work / step_s, 3)}, **stats)
  if stats.get("flops") and info.get("peak_flops"):
    achieved = stats["flops"] / step_s
    line.update(achieved_gflops=round(achieved / 1e9, 2),
                peak_gflops=round(info["peak_flops"] / 1e9, 1),
                fraction_of_peak=round(achieved / info["peak_flops"], 4),
                peak_how=info["peak_flops_how"])
  line.update(peak_memory(), gemm_weight_grad_sizes=info.get("gemm_weight_grad_sizes"), **extra)
  if "xla_flags" in info:
    line["xla_flags"] = info["xla_flags"]
  print(json.dumps(line), flush=True)
  return line


def bench_train(config, info):
  batch = fake_batch(config, FLAGS.batch, input_size(config), FLAGS.seed)
  state = hpunet_jax.create_train_state(config, FLAGS.seed, batch)
  train_step = hpunet_jax.make_train_step(config)
  batch = hpunet_jax.parallel.global_batch(batch, train_step.mesh)
  compiled, stats = compile_stats(train_step.jitted, state, batch)
  holder = [state]

  def run_once():
    holder[0], metrics_ = compiled(holder[0], batch)
    jax.block_until_ready(metrics_["loss"])

  for _ in range(FLAGS.warmup):
    run_once()
  if FLAGS.profile_dir:
    with jax.profiler.trace(FLAGS.profile_dir):
      for _ in range(FLAGS.steps):
        run_once()
    hlo_text = compiled.as_text()
    with open(os.path.join(FLAGS.profile_dir, profile_summary.HLO_FILE), "w") as f:
      f.write(hlo_text)
    per_step, total = profile_summary.summarise(
        profile_summary.latest_trace(FLAGS.profile_dir), hlo_text, FLAGS.steps)
    print(profile_summary.format_table(per_step, total), flush=True)
  best, median, busy = timed_repeats(run_once, FLAGS.steps, FLAGS.repeats)
  loss = float(compiled(holder[0], batch)[1]["loss"])
  return report("train", info, stats, best, median, FLAGS.batch, "images_per_s",
                **busy, loss_finite=bool(np.isfinite(loss)),
                augment_from=FLAGS.augment_from if augment.enabled(config.data) else None)


def bench_sample(config, info, num_samples):
  model = hpunet_jax.make_model(config_lib.model_config(config))
  batch = fake_batch(config, FLAGS.batch, FLAGS.size, FLAGS.seed)
  images = jnp.asarray(batch["image"])
  params = model.init(jax.random.key(FLAGS.seed), images[:1], jnp.asarray(batch["segmentation"][:1]))
  rng = jax.random.key(FLAGS.seed + 1)
  # `model.sample` is itself jitted; wrapping it lets us lower and compile apart.
  fn = jax.jit(lambda p, k, x: model.sample(p, k, x, num_samples=num_samples))
  compiled, stats = compile_stats(fn, params, rng, images)

  def run_once():
    jax.block_until_ready(compiled(params, rng, images))

  for _ in range(FLAGS.warmup):
    run_once()
  best, median, busy = timed_repeats(run_once, FLAGS.steps, FLAGS.repeats)
  return report(f"sample{num_samples}", info, stats, best, median, FLAGS.batch * num_samples,
                "samples_per_s", **busy, num_samples=num_samples)


def bench_ged(config, info, sample_chunk, num_samples=100, num_graders=4, test_images=1980):
  """GED100 as the evaluation computes it, for `--num_images` images on every device.

  The evaluation's own jitted function (`sampling.device_fn` with the LIDC
  scorer family: sampling in chunks of `sample_chunk`, posterior-mean
  reconstructions, IoU matrices and S_NCC), its images sharded over all
  devices in global batches of `--batch`, plus the host's GED from the
  matrices; the device memory XLA plans for one call (`xla_peak_mib`:
  temporaries, arguments and outputs, per device) against the chunk.
  """
  model = hpunet_jax.make_model(config_lib.model_config(config))
  mesh = parallel.make_mesh()
  batch = fake_batch(config, FLAGS.batch, FLAGS.size, FLAGS.seed)
  graders = np.random.default_rng(FLAGS.seed).random(
      (FLAGS.batch, FLAGS.size, FLAGS.size, num_graders)) > 0.9
  eval_batch = {"image": batch["image"], "masks": graders.astype(np.float32)}
  params = model.init(jax.random.key(FLAGS.seed), jnp.asarray(batch["image"][:1]),
                      jnp.asarray(batch["segmentation"][:1]))
  params = parallel.replicate(params, mesh)
  rng = parallel.replicate(jax.random.key(FLAGS.seed + 1), mesh)
  padded = sampling.padded_batch_size(FLAGS.batch, mesh.devices.size)
  families = (scorers.lidc.FAMILY,)
  fn = sampling.device_fn(model, num_samples, sample_chunk, mesh, families)
  compiled, stats = compile_stats(fn, params, rng,
                                  *sampling.global_inputs(eval_batch, 0, mesh, padded, families))
  try:
    mem = compiled.memory_analysis()
    stats["xla_peak_mib"] = round((mem.temp_size_in_bytes + mem.argument_size_in_bytes +
                                   mem.output_size_in_bytes - mem.alias_size_in_bytes) / 2**20, 1)
  except Exception:  # pylint: disable=broad-except
    pass

  def run_batch(i):
    out = sampling.batch_outputs(compiled, params, rng, eval_batch, i * FLAGS.batch, mesh,
                                 padded, families)["lidc"]
    return metrics.ged_from_iou(out["iou_sy"], out["iou_ss"], out["iou_yy"])

  if FLAGS.memory_only:
    line = dict(what="ged100", machine=info["machine"], platform=info["platform"],
                jax=info["jax"], batch=FLAGS.batch, size=FLAGS.size, **CONFIG_SOURCE,
                num_devices=mesh.devices.size, images_per_device=padded // mesh.devices.size,
                sample_chunk=sample_chunk, num_samples=num_samples, **stats)
    print(json.dumps(line), flush=True)
    return line
  run_batch(0)  # warm-up
  num_batches = -(-FLAGS.num_images // FLAGS.batch)
  times = []
  for _ in range(FLAGS.repeats):
    t0 = time.perf_counter()
    for i in range(num_batches):
      ged = run_batch(i)
    times.append(time.perf_counter() - t0)
  assert np.all(np.isfinite(ged))
  best, median = min(times), statistics.median(times)
  per_image = best / (num_batches * FLAGS.batch)
  return report("ged100", info, stats, best / num_batches, median / num_batches, FLAGS.batch,
                "images_per_s", num_images=num_batches * FLAGS.batch,
                num_devices=mesh.devices.size, sample_chunk=sample_chunk,
                images_per_device=padded // mesh.devices.size,
                total_s=round(best, 3), est_s_for_1980_images=round(per_image * test_images, 1))


def main(argv):
  del argv
  config = make_config()
  info = machine_info()
  resolved = hpunet_jax.make_model(config_lib.model_config(config)).config
  info["gemm_weight_grad_sizes"] = list(resolved.gemm_weight_grad_sizes)
  for what in FLAGS.what:
    if what == "train":
      bench_train(config, info)
    elif what.startswith("sample") and what[len("sample"):].isdigit():
      bench_sample(config, info, int(what[len("sample"):]))
    elif what == "ged100":
      for chunk in FLAGS.sample_chunks:
        bench_ged(config, info, int(chunk))
    else:
      raise app.UsageError(f"--what: unknown measurement {what!r} "
                           f"(train, sample16, sample100, sampleN, ged100)")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
