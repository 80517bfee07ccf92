"""The model layer: the HPU-Net's and the Prob. U-Net's configs, layers, initialisers and pure functions.

Imports only jax, haiku, numpy and scipy: nothing of data, training or I/O.
"""
from hpunet_jax.model.config import (ACTIVATIONS, COMPUTE_DTYPES, EXECUTION_FIELDS, HPUNetConfig,
                                     ProbUNetConfig)
from hpunet_jax.model.cpu_conv import CPU_GEMM_WEIGHT_GRAD_SIZES
from hpunet_jax.model.hpunet import (CoreOutput, HierarchicalCore, HPUNet, Model, StitchingDecoder,
                                     count_params, l2_penalty, make_model, normalise_mean)
from hpunet_jax.model.layers import Conv, Gaussian, ResBlock, kl_divergence

__all__ = ["ACTIVATIONS", "COMPUTE_DTYPES", "EXECUTION_FIELDS", "HPUNetConfig", "ProbUNetConfig",
           "CPU_GEMM_WEIGHT_GRAD_SIZES", "CoreOutput", "HierarchicalCore", "HPUNet", "Model",
           "StitchingDecoder", "count_params", "l2_penalty", "make_model", "normalise_mean",
           "Conv", "Gaussian", "ResBlock", "kl_divergence"]
