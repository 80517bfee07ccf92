"""The release's colab figure (`HPU_Net.ipynb`) for any run."""
import jax
import jax.numpy as jnp
import numpy as np

from hpunet_jax.data import pipeline
from hpunet_jax.evaluation import driver, figures, scales


# The release's colab (HPU_Net.ipynb): the first image of each of the first 10
# test patients, a reconstruction of grader 3 (0-based, the fourth) from a
# posterior sample, and 16 prior samples each with all scales free, only the
# coarsest (global) scale free, and only the finest (local) scale free.
COLAB_NUM_PATIENTS = 10
COLAB_GRADER = 3
COLAB_NUM_SAMPLES = 16


def colab_indices(data_config, split, num_patients=COLAB_NUM_PATIENTS):
  """Indices of the first image of each of the first `num_patients` patients.

  Patients in sorted order, and each patient's image with the first file name
  (`z-<z>_c<crop>.png`): the colab takes `glob(...)[0]` of unsorted folder
  listings, which this makes reproducible. Data without patients (fake,
  synthetic): the first `num_patients` examples.
  """
  ids = pipeline.example_ids(data_config, split)
  if ids is None:
    return list(range(min(num_patients, pipeline.num_examples(data_config, split))))
  first = {}
  for index, (patient, z, crop) in enumerate(ids):
    name = f"z-{z}_c{crop}.png"
    if patient not in first or name < first[patient][0]:
      first[patient] = (name, index)
  return [first[p][1] for p in sorted(first)[:num_patients]]


def colab_variants(num_scales):
  """`{file suffix: (mean per scale, title)}` of the colab's three sampling variants.

  The table `evaluation.scales.VARIANTS`, which the training figures use too.
  """
  return {variant.suffix: ((mean,) * num_scales if isinstance(mean, bool) else mean, variant.title)
          for variant, mean in scales.figure_variants(num_scales)}


def draw_colab_figures(model, params, config, split, path_prefix, *, rng=None,
                       num_patients=COLAB_NUM_PATIENTS, num_samples=COLAB_NUM_SAMPLES,
                       grader=COLAB_GRADER, title=""):
  """Draws the colab's figures: `path_prefix.png`, `..._coarsest_free.png`, `..._finest_free.png`.

  Returns:
    `(paths, arrays)` as `trainer.draw_figures`: images, masks, the
    reconstruction and the samples of each variant.
  """
  rng = jax.random.key(0) if rng is None else rng
  indices = colab_indices(config.data, split, num_patients)
  batch = driver.select_examples(config, split, None, indices)
  images = jnp.asarray(batch["image"])
  masks = np.moveaxis(np.asarray(batch["masks"]), -1, 1)          # [b, M, H, W]
  if masks.shape[1] <= grader:
    raise ValueError(f"the colab reconstructs grader {grader} (0-based) but {split} has "
                     f"{masks.shape[1]} graders")
  seg = jax.nn.one_hot(jnp.asarray(masks[:, grader] > 0.5, jnp.int32), model.config.num_classes)
  recon_rng, sample_rng = jax.random.split(rng)
  recon = np.asarray(jnp.argmax(model.reconstruct(params, recon_rng, images, seg), -1) == 1)
  arrays = {"indices": np.asarray(indices), "image": np.asarray(batch["image"]), "masks": masks,
            "reconstruction": recon}
  paths = []
  for n, (suffix, (mean, which)) in enumerate(colab_variants(model.config.num_scales).items()):
    logits = model.sample(params, jax.random.fold_in(sample_rng, n), images,
                          num_samples=num_samples, mean=mean)
    samples = np.asarray(jnp.argmax(logits, -1) == 1)              # [N, b, H, W]
    path = f"{path_prefix}{suffix}.png"
    figures.save_figure(path, figures.colab_figure(
        arrays["image"], masks, recon, samples,
        title=f"{title}{which}; recon: grader {grader + 1} from a posterior sample"))
    paths.append(path)
    arrays[f"samples{suffix}"] = samples
  return paths, arrays
