"""The HPU-Net LIDC recipe of `configs/lidc.py` on the 128x128 LIDC of the later literature.

    python -m experiments.train --config=configs/lidc_knegt.py --workdir=runs/lidc_knegt \
        --config.data.manual_dir=/path/to/folder/with/data_lidc.pickle \
        [--config.data.name=lidc_knegt/patient | lidc_knegt/hdf5]

Data: `lidc_knegt` (`hpunet_jax/data/lidc_knegt.py`), the pickle of the
PyTorch Prob. U-Net (stefanknegt/Probabilistic-Unet-Pytorch) or PHiSeg's hdf5,
which PHiSeg, SSN, MoSE, the Generalized Prob. U-Net and CCDM's "LIDC v1"
use; the default split is MoSE's (`lidc_knegt/mose`), `lidc_knegt/patient`
the Generalized Prob. U-Net's, `lidc_knegt/hdf5` the one stored in a PHiSeg or
CCDM file. Images are float32 in [0, 1] as stored (not quantised).

Everything else is `configs/lidc.py`: the release's model (21,877,230
parameters), GECO with kappa 0.05, top-k 2%, L2 1e-5, Adam 1e-4 halved at
60k/120k/180k/210k, batch 32, 240k steps, one random grader per example and
step, on-device augmentation with the loss masked where augmentation brings
in pixels from outside the image.

What changes at 128x128: the images are already the model's size, so there is
no 180 -> 128 crop, neither for training nor for evaluation (crop_size 128 is
the whole image). The translated crop of the 180x180 recipe spans the
(180 - 128) / 2 = 26 px margin around the crop; here there is no margin, so
the translation is 0 (`data.augment.max_translation` None = half the margin).
Rotation (+-20 deg), scale (0.8-1.2 per axis), shear (+-0.1) and the elastic
field (3 px on a 32 px grid) stay as in `configs/lidc.py`; with no margin they
bring in more pixels from outside the image (up to the corners a 20 deg
rotation and a 1.2 zoom uncover), which the loss mask leaves out (the train
metric `augment_valid_fraction` says how many were kept). The papers on this
data augment otherwise: PHiSeg (baumgach/PHiSeg-code `data/batch_provider.py`)
rotates by +-10 deg and rescales a random crop of 98-128 px, each for half the
images (its experiment configs set `do_flip_lr` / `do_flip_ud` while the code
reads `do_fliplr` / `do_flipud`, so it does not flip); CCDM
(`datasets/lidc.py`) flips both ways and rotates by multiples of 90 deg. The
numbers of this config are the HPU-Net recipe moved to this data, not a
reproduction of those papers.

Runtime: days on one GPU (not measured here). `:tiny` is a smoke run: a small
network (4 levels of 4-8 channels), 4 steps of batch 2 and a 2-image
evaluation with 16 samples, about a minute on a CPU.
"""
from configs import common
from hpunet_jax import config_lib


def get_config(arg=None):
  tiny = common.parse_arg("configs/lidc_knegt.py", arg) == "tiny"
  config = config_lib.base_config()     # the LIDC defaults: the release's model, GECO
  common.lidc_knegt_budget(config, tiny)  # 128x128, no crop; augmented, no translation
  if tiny:
    common.tiny_hpunet(config)          # 4 levels of 4-8 channels; latents at 1x1, 2x2
  return config
