"""HigherHRNet (bottom-up) and HRNet (top-down) pose estimation in JAX/Flax."""

__version__ = '0.1.0'


def predict(variables, config, image, *, boxes=None, people=None):
  """People in one RGB uint8 image, for either model family.

  HigherHRNet configs: see :func:`higherhrnet_jax.inference.predictor.predict`. Top-down
  configs need the people: `boxes` (`[N, 4]` x, y, w, h in image pixels) or `people`, the
  `(config, variables)` of a HigherHRNet that finds them (see
  :func:`higherhrnet_jax.topdown.detector_free.predict`).
  """
  if config.model.name == 'pose_hrnet':
    from higherhrnet_jax.topdown import detector_free  # pylint: disable=g-import-not-at-top
    return detector_free.predict(variables, config, image, boxes=boxes, people=people)
  if boxes is not None or people is not None:
    raise ValueError('predict: boxes / people apply to top-down models only')
  from higherhrnet_jax.inference.predictor import predict as _predict  # pylint: disable=g-import-not-at-top
  return _predict(variables, config, image)
