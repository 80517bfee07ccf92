"""Datasets and the input pipeline.

Importing this package registers the tfds builders `lidc_crops`, `lidc_knegt`,
`synthetic_multiscale`, `synthetic_objects` and `synthetic_grid`; the grain pipeline is `hpunet_jax.data.pipeline`
(imported on demand, as it pulls in grain).
"""
from hpunet_jax.data.lidc import LidcCrops, LidcCropsConfig
from hpunet_jax.data.lidc_knegt import LidcKnegt, LidcKnegtConfig
from hpunet_jax.data.synthetic import MultiscaleDefinition, SyntheticMultiscale, SyntheticMultiscaleConfig
from hpunet_jax.data.synthetic import ObjectsDefinition, SyntheticObjects, SyntheticObjectsConfig
from hpunet_jax.data.synthetic import GridDefinition, SyntheticGrid, SyntheticGridConfig

__all__ = [
    "LidcCrops", "LidcCropsConfig", "LidcKnegt", "LidcKnegtConfig",
    "MultiscaleDefinition", "SyntheticMultiscale", "SyntheticMultiscaleConfig",
    "ObjectsDefinition", "SyntheticObjects", "SyntheticObjectsConfig",
    "GridDefinition", "SyntheticGrid", "SyntheticGridConfig",
]
