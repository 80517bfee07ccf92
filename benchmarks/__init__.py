"""Benchmarks of hpunet-jax (not part of the installed package)."""
