"""HigherHRNet bottom-up multi-person pose estimation in JAX/Flax."""

__version__ = '0.1.0'
