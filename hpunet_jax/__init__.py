"""hpunet-jax: the Hierarchical Probabilistic U-Net (Kohl et al. 2019) in JAX/Haiku."""
