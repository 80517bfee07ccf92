"""Datasets and the input pipeline.

Importing this package registers the tfds builders `lidc_crops`,
`synthetic_multiscale` and `synthetic_objects`; the grain pipeline is `hpunet_jax.data.pipeline`
(imported on demand, as it pulls in grain).
"""
from hpunet_jax.data.lidc import LidcCrops, LidcCropsConfig
from hpunet_jax.data.synthetic import MultiscaleDefinition, SyntheticMultiscale, SyntheticMultiscaleConfig
from hpunet_jax.data.synthetic import ObjectsDefinition, SyntheticObjects, SyntheticObjectsConfig

__all__ = [
    "LidcCrops", "LidcCropsConfig",
    "MultiscaleDefinition", "SyntheticMultiscale", "SyntheticMultiscaleConfig",
    "ObjectsDefinition", "SyntheticObjects", "SyntheticObjectsConfig",
]
