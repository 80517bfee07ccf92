r"""Op time of a profiled XLA program, summed by kind (the table in RESULTS.md).

    python -m benchmarks.throughput --what=train --profile_dir=/tmp/trace
    python -m benchmarks.profile_summary --trace_dir=/tmp/trace --steps=5

`benchmarks.throughput --profile_dir=DIR` writes a `jax.profiler` trace of the
timed steps and the compiled program's optimised HLO (`DIR/train_step.hlo.txt`)
and prints this summary itself. Each XLA op in the trace is matched to its HLO
instruction and counted as a forward convolution, an input gradient, a weight
gradient, a dot (forward or backward), a transpose or copy, a concatenation,
pooling, or elementwise/other; the time is summed over all executor threads
(ops that overlap both count) and divided by the number of profiled steps.

The kinds come from the HLO text: a weight gradient is a convolution whose
window is larger than 3x3 or whose operand labels put the feature axis before
the batch (`01fb`), an input gradient one that JAX's autodiff emitted
(`transpose(jvp(...))` in its metadata). They are heuristics for this model's
stride-1 convolutions, not a general HLO classifier.
"""
import collections
import glob
import gzip
import json
import os
import re

from absl import app
from absl import flags

KINDS = ("conv weight gradient", "transpose / copy", "dot backward", "dot forward",
         "concatenate", "conv forward", "conv input gradient", "elementwise / other",
         "pooling")
HLO_FILE = "train_step.hlo.txt"


def _instructions(hlo_text):
  """{instruction name: its line} over the whole module, and {computation: body}."""
  lines, bodies = {}, {}
  for match in re.finditer(r"\n(?:ENTRY )?%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo_text, re.S):
    bodies[match.group(1)] = match.group(2)
    for line in match.group(2).split("\n"):
      m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (.*)", line)
      if m:
        lines[m.group(1)] = m.group(2)
  return lines, bodies


def kind_of(name, lines, bodies):
  """The kind (one of KINDS) of the HLO instruction `name`."""
  line = lines.get(name, "")
  calls = re.search(r"calls=%?([\w.\-]+)", line)
  body = bodies.get(calls.group(1), "") if calls else ""
  text = body + "\n" + line
  meta = re.search(r'op_name="([^"]*)"', line)
  backward = bool(meta) and "transpose(jvp" in meta.group(1)
  if " convolution(" in text:
    window = re.search(r"window=\{size=(\d+)x(\d+)", text)
    if (window and int(window.group(1)) > 3) or "01fb" in text:
      return "conv weight gradient"
    return "conv input gradient" if backward else "conv forward"
  if " dot(" in text:
    return "dot backward" if backward else "dot forward"
  if "transpose" in name or " transpose(" in text or name.startswith("copy"):
    return "transpose / copy"
  if "reduce-window" in text:
    return "pooling"
  if "concatenate" in name or " concatenate(" in text:
    return "concatenate"
  return "elementwise / other"


def latest_trace(trace_dir):
  traces = sorted(glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.trace.json.gz")))
  if not traces:
    raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}/plugins/profile: "
                            "is it a jax.profiler.trace directory?")
  return traces[-1]


def summarise(trace_path, hlo_text, steps):
  """{kind: op seconds per step} for the XLA ops of `trace_path`, and the total."""
  with gzip.open(trace_path) as f:
    events = json.load(f)["traceEvents"]
  durations = collections.Counter()
  for event in events:
    if event.get("ph") == "X" and "hlo_op" in event.get("args", {}):
      durations[event["args"]["hlo_op"]] += event["dur"]  # microseconds
  if not durations:
    raise ValueError(f"{trace_path} has no XLA op events (args.hlo_op)")
  lines, bodies = _instructions(hlo_text)
  by_kind = collections.Counter()
  for name, micros in durations.items():
    by_kind[kind_of(name, lines, bodies)] += micros
  per_step = {k: by_kind[k] / 1e6 / steps for k in KINDS if by_kind[k]}
  return per_step, sum(per_step.values())


def format_table(per_step, total):
  rows = [f"op time per step (all threads): {total:.3f} s"]
  for kind, seconds in sorted(per_step.items(), key=lambda kv: -kv[1]):
    rows.append(f"  {kind:22s} {seconds:7.3f} s  {100 * seconds / total:5.1f}%")
  return "\n".join(rows)


def main(argv):
  del argv
  trace_dir = flags.FLAGS.trace_dir
  hlo_path = flags.FLAGS.hlo or os.path.join(trace_dir, HLO_FILE)
  if not os.path.exists(hlo_path):
    raise app.UsageError(f"--hlo: {hlo_path} does not exist (benchmarks.throughput "
                         f"--profile_dir writes {HLO_FILE} there)")
  with open(hlo_path) as f:
    hlo_text = f.read()
  per_step, total = summarise(latest_trace(trace_dir), hlo_text, flags.FLAGS.steps)
  print(format_table(per_step, total))


if __name__ == "__main__":
  flags.DEFINE_string("trace_dir", None, "The --profile_dir of benchmarks.throughput.")
  flags.DEFINE_string("hlo", None, f"Optimised HLO text; default TRACE_DIR/{HLO_FILE}.")
  flags.DEFINE_integer("steps", 1, "Profiled steps, to report seconds per step.")
  flags.mark_flag_as_required("trace_dir")
  app.run(main)
