"""hpunet-jax: the Hierarchical Probabilistic U-Net (Kohl et al. 2019) in JAX/Haiku."""
from hpunet_jax.model import HPUNetConfig, make_model
from hpunet_jax.train import TrainState, create_train_state, make_train_step
from hpunet_jax import config_lib, objective, parallel

__all__ = ["HPUNetConfig", "make_model", "TrainState", "create_train_state", "make_train_step",
           "config_lib", "objective", "parallel"]
