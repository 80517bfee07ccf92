"""DeepMind's released model: its TF1 checkpoint read without TensorFlow, its names, its colab figure.

The top layer: imports the model, the infrastructure, the evaluation's
figures and the training state (for a fresh optimiser), never the training
loop. docs/pretrained.md.
"""
from hpunet_jax.release.colab import (COLAB_GRADER, COLAB_NUM_PATIENTS, COLAB_NUM_SAMPLES,
                                      colab_indices, colab_variants, draw_colab_figures)
from hpunet_jax.release.importer import import_release, lidc_config, resolve_checkpoint
from hpunet_jax.release.names import (GLOBAL_STEP, IMPORT_FILE, LAGRANGE_MULTIPLIER,
                                      RELEASE_PREFIX_NAME, RELEASE_SCOPE, RELEASE_URL,
                                      SKIP_GLOBAL_STEP, SKIP_LAGRANGE, SKIP_MOVING_AVERAGE,
                                      SKIP_OPTIMIZER, Converted, ReleaseImportError, convert,
                                      find_scope, name_map)

__all__ = ["COLAB_GRADER", "COLAB_NUM_PATIENTS", "COLAB_NUM_SAMPLES", "colab_indices",
           "colab_variants", "draw_colab_figures", "import_release", "lidc_config",
           "resolve_checkpoint", "GLOBAL_STEP", "IMPORT_FILE", "LAGRANGE_MULTIPLIER",
           "RELEASE_PREFIX_NAME", "RELEASE_SCOPE", "RELEASE_URL", "SKIP_GLOBAL_STEP",
           "SKIP_LAGRANGE", "SKIP_MOVING_AVERAGE", "SKIP_OPTIMIZER", "Converted",
           "ReleaseImportError", "convert", "find_scope", "name_map"]
