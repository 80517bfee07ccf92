"""Datasets and the input pipeline.

Importing this package registers the tfds builders `lidc_crops` and
`synthetic_multiscale`; the grain pipeline is `hpunet_jax.data.pipeline`
(imported on demand, as it pulls in grain).
"""
from hpunet_jax.data.lidc import LidcCrops, LidcCropsConfig
from hpunet_jax.data.synthetic import MultiscaleDefinition, SyntheticMultiscale, SyntheticMultiscaleConfig

__all__ = [
    "LidcCrops", "LidcCropsConfig",
    "MultiscaleDefinition", "SyntheticMultiscale", "SyntheticMultiscaleConfig",
]
