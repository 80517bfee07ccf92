"""The model layer: every model's config, layers, initialisers and pure functions.

Imports only jax, haiku, numpy and scipy: nothing of data, training or I/O.
`make_model(config)` builds the model a config describes (`registry.py`).
"""
from hpunet_jax.model.base import Model, normalise_mean
from hpunet_jax.model.config import ACTIVATIONS, COMPUTE_DTYPES, EXECUTION_FIELDS
from hpunet_jax.model.cpu_conv import CPU_GEMM_WEIGHT_GRAD_SIZES
from hpunet_jax.model.hpunet import (CoreOutput, HierarchicalCore, HPUNet, HPUNetConfig,
                                     StitchingDecoder, count_params, l2_penalty)
from hpunet_jax.model.layers import Conv, Gaussian, ResBlock, kl_divergence
from hpunet_jax.model.prob_unet import ProbUNetConfig
from hpunet_jax.model.registry import MODELS, make_model

__all__ = ["ACTIVATIONS", "COMPUTE_DTYPES", "EXECUTION_FIELDS", "HPUNetConfig", "ProbUNetConfig",
           "CPU_GEMM_WEIGHT_GRAD_SIZES", "CoreOutput", "HierarchicalCore", "HPUNet", "MODELS",
           "Model", "StitchingDecoder", "count_params", "l2_penalty", "make_model",
           "normalise_mean", "Conv", "Gaussian", "ResBlock", "kl_divergence"]
