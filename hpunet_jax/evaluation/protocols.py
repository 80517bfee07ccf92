"""The LIDC literature's evaluation protocols as presets: `--config.eval.protocol=NAME`.

A protocol says how many samples an image gets, which scores are computed on
how many of them, how HM-IoU repeats samples and graders, and on which images
(`Protocol`). Each preset below follows the evaluation code a paper published,
read in its repository at the commit named; its docstring says where that code
differs from this package's conventions (docs/evaluation.md) and whether the
preset follows it. The published numbers and the data each paper used:
docs/literature.md.

What every code read agrees on, and this package does too: IoU on the
foreground, both masks empty -> IoU 1, one empty -> IoU 0 (MoSE's
`(I + 1e-8) / (U + 1e-8)` gives ~1e-8 / U instead of 0, which no reported digit
shows); d = 1 - IoU; GED's expectations over all pairs, i = j included;
HM-IoU by `scipy.optimize.linear_sum_assignment` on 1 - IoU. Repeating the 4
graders to 16 (CAR, MoSE, BerDiff) and tiling both sets to their least common
multiple (CCDM, this package) give the same matched IoU at 16 samples: the
optimal assignment's value does not depend on the order of the copies.

The images: `hpunet` evaluates `eval.num_examples` images of `eval.split` as
the config says (the training loop's periodic evaluation uses a fixed slice);
the papers' presets evaluate the whole split (`whole_split`). Pass
`--config.eval.split=test` for the papers' numbers.
"""
import dataclasses
from typing import Optional

# HM-IoU's repetition of samples and graders (`metrics.hungarian_matched_iou_from_iou`).
TILINGS = ("lcm", "graders")


@dataclasses.dataclass(frozen=True)
class Protocol:
  """How an evaluation samples and scores; a preset per paper below.

  Attributes:
    name: the preset's name (`eval.protocol`).
    num_samples: samples per image; None: the config's `eval.num_samples`.
    ged_sizes: GED over the first n samples, for each n (sizes above the
      sample count are skipped).
    hm_iou_size: HM-IoU over the first n samples; None: no HM-IoU.
    hm_iou_tiling: 'lcm' (samples and graders tiled to their least common
      multiple) or 'graders' (the graders repeated to the sample count, which
      must be a multiple of the grader count; the same value where it is).
    hm_iou_num_images: HM-IoU on the first this many images only; None: all.
    ncc: S_NCC (PHiSeg's `variance_ncc_dist`) on all samples.
    iou_rec: IoU of the posterior-mean reconstruction from each grader.
    diversity: mean pairwise 1 - IoU among all samples.
    subset_b: GED and HM-IoU also on the images where every grader marked something.
    whole_split: every image of the split, whatever `eval.num_examples` says.
    source: the repository, commit and files the preset follows.
  """
  name: str
  num_samples: Optional[int]
  ged_sizes: tuple
  hm_iou_size: Optional[int] = None
  hm_iou_tiling: str = "lcm"
  hm_iou_num_images: Optional[int] = None
  ncc: bool = False
  iou_rec: bool = False
  diversity: bool = False
  subset_b: bool = False
  whole_split: bool = True
  source: str = ""

  def __post_init__(self):
    if self.hm_iou_tiling not in TILINGS:
      raise ValueError(f"hm_iou_tiling={self.hm_iou_tiling!r}: need one of {TILINGS}")


def hpunet() -> Protocol:
  """This package's default: the HPU-Net paper's scores (arXiv:1905.13077).

  GED over the first 16, 50 and 100 samples, HM-IoU over the first 16 (tiled
  to the least common multiple), IoU_rec, S_NCC and the sample diversity, GED
  and HM-IoU also on subset B; `eval.num_samples` (default 100) samples of
  `eval.num_examples` images. The paper's evaluation code is not public:
  this is its text (docs/model.md#published-numbers-on-lidc).
  """
  return Protocol(name="hpunet", num_samples=None, ged_sizes=(16, 50, 100), hm_iou_size=16,
                  ncc=True, iou_rec=True, diversity=True, subset_b=True, whole_split=False,
                  source="the HPU-Net paper's text (its evaluation code is not public)")


def phiseg() -> Protocol:
  """PHiSeg (Baumgartner et al. 2019): 50 samples, GED and S_NCC, the whole test set.

  Follows baumgach/PHiSeg-code@c43f3b3 `phiseg_test_quantitative.py`
  (`n_samples = 50`) and `utils.py` (`generalised_energy_distance` with
  `nlabels=1`, `variance_ncc_dist`), both of which this package's `ged` and
  `ncc` reproduce. Not followed: PHiSeg picks the checkpoint with the best
  validation GED (`model_selection = 'best_ged'`); this evaluates the run's
  newest checkpoint.
  """
  return Protocol(name="phiseg", num_samples=50, ged_sizes=(50,), ncc=True,
                  source="baumgach/PHiSeg-code@c43f3b3 phiseg_test_quantitative.py, utils.py")


def ssn() -> Protocol:
  """Stochastic Segmentation Networks (Monteiro et al. 2020): 100 samples.

  Follows MiguelMonteiro/PHiSeg-code@86436f8 `phiseg_full_evaluation.py`
  (`--num-samples` default 100) and `utils.py`: GED (same formula and
  empty-mask convention as PHiSeg), the sample diversity it returns beside it,
  and S_NCC, on the whole test set. Not computed here: that script's
  per-grader Dice (both empty -> NaN, `nanmean`), entropy, ECE and sample
  log-likelihood, which this package has no metric for.
  """
  return Protocol(name="ssn", num_samples=100, ged_sizes=(100,), ncc=True, diversity=True,
                  source="MiguelMonteiro/PHiSeg-code@86436f8 phiseg_full_evaluation.py, utils.py")


def car() -> Protocol:
  """Calibrated Adversarial Refinement (Kassapis et al. 2021): 16 samples.

  Follows EliasKassapis/CARSSS@ff7ec86 `testing/test.py` and
  `utils/evaluation_utils.py`: GED of the 16 samples against the 4 graders
  (graders not repeated); HM-IoU with the graders repeated to 16
  (`lab_dist.repeat(16 // 4)`), the whole test set. CAR averages batch means
  (`--batch-size-plotting` 5, `drop_last=True`); on the release's 1980 test
  images every batch is full, so that equals the mean over images computed
  here. Its data are DeepMind's crops centre-cropped to 128x128
  (`configs/lidc.py`'s evaluation crop).
  """
  return Protocol(name="car", num_samples=16, ged_sizes=(16,), hm_iou_size=16,
                  hm_iou_tiling="graders",
                  source="EliasKassapis/CARSSS@ff7ec86 testing/test.py, utils/evaluation_utils.py")


def ccdm() -> Protocol:
  """CCDM (Zbinden et al. 2023): 16 samples, GED and least-common-multiple HM-IoU.

  Follows LarsDoorenbos/ccdm-stochastic-segmentation@ceb781d
  `evaluation/evaluate_lidc_uncertainty.py` (HM-IoU with samples and graders
  `repeat_interleave`d to `np.lcm(samples, 4)`, as this package tiles them),
  `ddpm_eval.py`, `params_eval.yml`. Images: the shipped `params_eval.yml`
  sets `dataset_val_max_size: null`, the whole test set, which this follows;
  not followed: the function's own default, the first 500 test images
  (`Subset(dataset, range(500))`), which only a changed config reaches.
  Samples: the code reports GED and HM-IoU at each count of
  `params["evaluations"]` (prefixes of the same samples), which the shipped
  file does not set to a list (it holds the integer 8); 16 is the count of
  the other presets on these data, the paper's table was not read here
  (docs/literature.md).
  Not computed: CCDM's mIoU / Dice of the mean prediction against the
  non-empty graders.
  """
  return Protocol(name="ccdm", num_samples=16, ged_sizes=(16,), hm_iou_size=16,
                  hm_iou_tiling="lcm",
                  source="LarsDoorenbos/ccdm-stochastic-segmentation@ceb781d "
                         "evaluation/evaluate_lidc_uncertainty.py, ddpm_eval.py, params_eval.yml")


def mose() -> Protocol:
  """MoSE (Gao et al. 2023): 16 samples in the standard representation.

  Follows gaozhitong/MoSE-AUSeg@8261e7d `utils/metrics.py`
  (`cal_metrics_batch`) with `eval_sample_num = 16`, the setting of its
  README's table: GED with uniform weights (the usual GED) and M-IoU, the
  16 x 4 cost matrix tiled along the graders to 16 x 16 (`repeat(1, 1, N //
  M)`), the whole test set. Not followed: (1) the default compact
  representation (4 experts x 4 samples weighted by the experts'
  probabilities, matched by optimal transport) is specific to MoSE's
  experts; the models here draw samples of equal weight. (2) MoSE averages
  the means of batches of 4 (`test_batch_size = 4`, `drop_last=False`) in
  the string-sorted order of its `.npy` files; the mean over images computed
  here differs only by the weight of the last, incomplete batch. (3) MoSE's
  ECE is not computed.
  """
  return Protocol(name="mose", num_samples=16, ged_sizes=(16,), hm_iou_size=16,
                  hm_iou_tiling="graders",
                  source="gaozhitong/MoSE-AUSeg@8261e7d utils/metrics.py, engine.py, "
                         "experiments/lidc_proposed.py")


def berdiff() -> Protocol:
  """BerDiff (Chen et al. 2023): 16 samples, HM-IoU on the first 180 test images.

  Follows takimailto/BerDiff@d0978f1 `codes/test.py`: GED over all test
  images, HM-IoU with the graders repeated to 16 (`np.repeat(label, 4, 0)`)
  on the first 180 test images only (`i < 180`). Not followed exactly:
  BerDiff lists its images with an unsorted `glob` (file-system order, not
  reproducible from the code); here the first 180 are those of the
  pipeline's order (`lidc_crops`: sorted by patient, slice and crop). Its
  Soft-Dice is not computed. Data: DeepMind's crops, `[26:-26, 26:-26]`.
  """
  return Protocol(name="berdiff", num_samples=16, ged_sizes=(16,), hm_iou_size=16,
                  hm_iou_tiling="graders", hm_iou_num_images=180,
                  source="takimailto/BerDiff@d0978f1 codes/test.py")


PROTOCOLS = {p.__name__: p for p in (hpunet, phiseg, ssn, car, ccdm, mose, berdiff)}


def get(name: str) -> Protocol:
  """The preset called `name`; ValueError naming `eval.protocol` otherwise."""
  if name not in PROTOCOLS:
    raise ValueError(f"eval.protocol={name!r}: need one of {tuple(PROTOCOLS)}")
  return PROTOCOLS[name]()


def of_config(eval_config) -> Protocol:
  """The protocol of a config's `eval` group (`hpunet` where the field is missing)."""
  return get(eval_config.get("protocol", "hpunet"))


def num_samples(eval_config) -> int:
  """Samples per image: the protocol's, or `eval.num_samples` for `hpunet`."""
  protocol = of_config(eval_config)
  return protocol.num_samples or eval_config.num_samples


def num_examples(eval_config) -> Optional[int]:
  """Images to evaluate: all (None) for the papers' presets, else `eval.num_examples`."""
  return None if of_config(eval_config).whole_split else eval_config.num_examples
