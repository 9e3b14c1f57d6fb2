"""HigherHRNet bottom-up multi-person pose estimation in JAX/Flax."""

__version__ = '0.1.0'


def predict(variables, config, image):
  """People in one RGB uint8 image: see :func:`higherhrnet_jax.inference.predictor.predict`."""
  from higherhrnet_jax.inference.predictor import predict as _predict
  return _predict(variables, config, image)
