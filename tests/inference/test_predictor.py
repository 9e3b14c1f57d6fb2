"""The compiled test loop (network, aggregation, grouping) on real images.

Weights: the fixtures' tiny state dict, whose outputs are large enough to give many
detections, so grouping and the map back to the image are exercised.
"""

import json

import jax
import numpy as np
import pytest

from numerics import assert_close_to_scale
import higherhrnet_jax
from higherhrnet_jax import config as config_lib
from higherhrnet_jax import convert
from higherhrnet_jax.data.coco import decode_image
from higherhrnet_jax.evaluation import runner
from higherhrnet_jax.inference import compile as compile_lib, grouping, transforms
from higherhrnet_jax.inference.predictor import Predictor

import composed  # tests/inference/composed.py


@pytest.fixture(scope='module')
def setup(fixtures_dir, coco_sample_dir):
  config = config_lib.load_config('configs/tiny.py', [
      f'dataset.test_annotations={coco_sample_dir / "test_coco.json"}',
      f'dataset.test_images={coco_sample_dir}'])
  variables = convert.load_official(fixtures_dir / 'tiny_state_dict.npz', config.model)
  images = [decode_image(p) for p in sorted(coco_sample_dir.glob('*.jpg'))]
  return config, variables, Predictor(config, variables), images


def test_predictor_equals_the_reference_composition(setup):
  config, variables, predictor, images = setup
  image = images[1]
  got = predictor(image)
  # Reference: the jitted network + aggregation of `outputs`, then `grouping.parse` on the
  # unpadded maps and the official map back to the image.
  model = predictor.model
  options = compile_lib.cpu_forward_options() if jax.default_backend() == 'cpu' else None
  fn = composed.jit_inference(lambda v, x: model.apply(v, x, train=False), predictor.spec,
                              options)
  prep = transforms.prepare_test_input(image, config.data.input_size, config.test.scale_factor)
  b = transforms.bucket_batch([prep])
  final, tags = fn(variables, b['images'], b['input_hw'], b['base_hw'], base_shape=b['base_shape'])
  (hm, tg), = composed.crop(final, tags, b['base_hw'])
  poses, scores = grouping.parse(hm, tg, grouping.GroupingSpec.from_config(config))
  poses = transforms.get_final_preds(poses, prep.center, prep.scale, prep.base_size)
  assert len(scores) > 0, 'the fixture weights should give detections'
  np.testing.assert_array_equal(got.scores, scores)
  np.testing.assert_array_equal(got.poses, poses)


# Batched vs one-by-one: XLA:CPU may order the float32 convolution sums differently for
# another batch size (measured: up to 4.8e-7 on tags and joint scores of order 1 on an
# AMD EPYC with AVX2; none on an Intel AVX-512 processor): a few ulp of the outputs' scale; 1e-5 of the scale keeps a 20x margin, while a batching bug (another image's maps,
# padding read as image) moves scores and tags by 1e-2 or more. The discrete decisions, the
# same people in the same order at the same peaks, stay exact.
BATCH_REL = 1e-5


def test_batches_equal_single_images(setup):
  _, _, predictor, images = setup
  single = [predictor(im) for im in images]
  batched = list(predictor.predict_many(enumerate(images), batch_size=3))
  assert [k for k, _ in batched] == list(range(len(images)))
  for s, (_, b) in zip(single, batched):
    assert s.poses.shape == b.poses.shape
    np.testing.assert_array_equal(s.poses[..., :2], b.poses[..., :2])  # peak locations
    for col in range(2, s.poses.shape[-1]):  # joint score, then the tag(s)
      assert_close_to_scale(b.poses[..., col], s.poses[..., col], BATCH_REL)
    assert_close_to_scale(b.scores, s.scores, BATCH_REL)


def test_predictions_lie_in_the_image(setup):
  _, _, predictor, images = setup
  for image in images:
    pred = predictor(image)
    assert pred.poses.shape[1:] == (17, 5) and pred.scores.shape == pred.poses.shape[:1]
    found = pred.poses[..., 2] > 0
    h, w = image.shape[:2]
    xy = pred.poses[..., :2][found]
    # The long side is padded to a multiple of 64 around the image centre; detections in
    # that border map to just outside the image, never farther.
    margin = 64 / 128 * min(h, w)
    assert (xy[:, 0] >= -margin).all() and (xy[:, 0] <= w + margin).all()
    assert (xy[:, 1] >= -margin).all() and (xy[:, 1] <= h + margin).all()


def test_package_level_predict_and_odd_inputs(setup):
  config, variables, _, images = setup
  pred = higherhrnet_jax.predict(variables, config, images[0])
  assert pred.poses.ndim == 3
  tiny = higherhrnet_jax.predict(variables, config, np.zeros((1, 1, 3), np.uint8))
  assert tiny.poses.shape[1:] == (17, 5)
  gray = higherhrnet_jax.predict(variables, config, images[0][..., 0])
  assert gray.poses.ndim == 3
  with pytest.raises(ValueError, match='empty'):
    higherhrnet_jax.predict(variables, config, np.zeros((0, 5, 3), np.uint8))


def test_package_level_predict_follows_swapped_weights(setup):
  """New weights are used even when the new dict reuses a dropped dict's id()."""
  config, variables, predictor, images = setup
  expected = predictor(images[1])
  assert len(expected.scores) > 0
  silent = lambda: jax.tree.map(np.zeros_like, variables)  # no detections at all
  copy = lambda: jax.tree.map(lambda a: a, variables)
  for make, people in ((silent, 0), (copy, len(expected.scores)), (silent, 0), (copy, None)):
    got = higherhrnet_jax.predict(make(), config, images[1])  # the dict is dropped after
    assert len(got.scores) == (people if people is not None else len(expected.scores))
  np.testing.assert_array_equal(got.poses, expected.poses)
  # The same dict object updated in place (same id()) with other weights.
  held = copy()
  assert len(higherhrnet_jax.predict(held, config, images[1]).scores) == len(expected.scores)
  held.update(silent())
  assert len(higherhrnet_jax.predict(held, config, images[1]).scores) == 0


def test_evaluate_writes_results_metrics_and_pictures(setup, tmp_path):
  config, _, predictor, _ = setup
  metrics = runner.evaluate(predictor, config, out_dir=tmp_path, batch_size=2, render=2)
  for name in ('AP', 'AP50', 'AP75', 'APm', 'APl', 'AR', 'AR50', 'AR75', 'ARm', 'ARl'):
    assert -1.0 <= metrics[name] <= 1.0
  assert metrics['num_images'] == 4 and metrics['num_skipped_images'] == 0
  records = json.loads((tmp_path / 'results.json').read_text())
  assert {r['image_id'] for r in records} <= {785, 40083, 196141, 197388}
  assert len(records) == metrics['num_people']
  saved = json.loads((tmp_path / 'metrics.json').read_text())
  assert saved['AP'] == metrics['AP']
  assert len(list(tmp_path.glob('pred_*.png'))) == 2
  assert 'network' in runner.format_table(metrics)


def test_compilation_is_timed_apart_from_the_stages(setup, monkeypatch):
  """Per-image times hold no one-off compilation: XLA compiles only inside the Predictor's
  ahead-of-time step (the jitted calls reuse it) and numba only inside the warm-up."""
  config, variables, _, images = setup
  # A bucket no other test uses, so the programs are new to JAX's in-memory caches.
  config = config_lib.validate(config_lib.apply_overrides(
      config.copy_and_resolve_references(), ['test.shape_bucket=96']))
  predictor = Predictor(config, variables)
  inside_compile = []
  compile_once = predictor._compile

  def tracked_compile(*args, **kwargs):
    inside_compile.append(True)
    try:
      return compile_once(*args, **kwargs)
    finally:
      inside_compile.pop()

  monkeypatch.setattr(predictor, '_compile', tracked_compile)
  warm_up = grouping.warm_up
  kernels = (grouping.host.parse_host, grouping.host.group)
  signatures_after_warm_up = []

  def tracked_warm_up(*args, **kwargs):
    warm_up(*args, **kwargs)
    signatures_after_warm_up.append(sum(len(k.signatures) for k in kernels))

  monkeypatch.setattr(grouping, 'warm_up', tracked_warm_up)
  xla_compiles, stray = [], []

  def listener(event, duration, **kwargs):
    if event == '/jax/core/compile/backend_compile_duration':
      (xla_compiles if inside_compile else stray).append(duration)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    got = list(predictor.predict_many(enumerate(images), profile=True))
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert len(got) == len(images)
  assert xla_compiles and not stray, f'{len(stray)} compilations inside the timed stages'
  assert signatures_after_warm_up, 'the grouping was not warmed up'
  assert sum(len(k.signatures) for k in kernels) == signatures_after_warm_up[-1]
  assert predictor.timings['compile'] > 0 and predictor.timings['images'] == len(images)


def test_weights_in_program_gives_the_same_maps_and_follows_new_weights(setup):
  """`test.weights_in_program`: the network compiled with the weights as constants (CPU).

  Same float32 network, other summation order (Eigen instead of YNNPACK convolutions, BN
  constants folded by XLA): the maps agree to 1e-5 of their scale (a few ulp through the
  network, as the batching tolerance above), while a wrong or stale weight moves them by
  far more. New weights recompile the program and are used.
  """
  config, variables, reference, images = setup
  baked_config = config_lib.validate(config_lib.apply_overrides(
      config.copy_and_resolve_references(), ['test.weights_in_program=True']))
  baked = Predictor(baked_config, variables)
  inputs = [reference.prepare(images[0])]

  def maps(predictor):
    flight = predictor.dispatch(inputs)
    return np.asarray(flight.final), np.asarray(flight.tags)

  (want_hm, want_tags), (got_hm, got_tags) = maps(reference), maps(baked)
  assert_close_to_scale(got_hm, want_hm, 1e-5)
  assert_close_to_scale(got_tags, want_tags, 1e-5)
  assert len(baked._programs) == 1 and baked.timings['compile'] > 0
  maps(baked)
  assert len(baked._programs) == 1  # the same bucket reuses its program

  other = jax.tree.map(lambda a: np.asarray(a) * np.float32(1.5), variables)
  baked.set_variables(other)
  reference_other = Predictor(config, other)
  (want_hm, _), (got_hm, _) = maps(reference_other), maps(baked)
  assert_close_to_scale(got_hm, want_hm, 1e-5)


def test_device_grouping_gives_the_host_results(setup):
  """`test.grouping_on=device` (the accelerator default: maps stay on the device, only
  candidates and refine's results reach the host) against the host path, batched over
  images of different sizes in one padded batch: the same people, exactly."""
  config, variables, host_predictor, images = setup
  on_device = config_lib.validate(config_lib.apply_overrides(
      config.copy_and_resolve_references(), ['test.grouping_on=device']))
  device_predictor = Predictor(on_device, variables)
  assert host_predictor.grouping_on == 'host' and device_predictor.grouping_on == 'device'
  inputs = [device_predictor.prepare(im) for im in images[:3]]
  got = device_predictor.collect(device_predictor.dispatch(inputs))
  want = host_predictor.collect(host_predictor.dispatch(inputs))
  assert sum(len(p.scores) for p in want) > 0
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g.poses, w.poses)
    np.testing.assert_array_equal(g.scores, w.scores)
  assert device_predictor.timings['compile'] > 0  # refine scans compiled ahead, timed apart


def test_dark_codec_moves_only_the_decoded_joints(setup):
  """`data.codec=dark`: the same people and scores as the official decoding, each found
  joint at its pixel centre plus DARK's step instead of the quarter pixel (the two differ
  by at most 0.25 + 0.5 heatmap pixels); maps on the host or left on the device agree."""
  config, variables, official, images = setup
  overrides = ['data.codec=dark', 'test.dark_blur_kernel=3']
  dark = Predictor(config_lib.validate(config_lib.apply_overrides(
      config.copy_and_resolve_references(), overrides)), variables)
  on_device = Predictor(config_lib.validate(config_lib.apply_overrides(
      config.copy_and_resolve_references(), overrides + ['test.grouping_on=device'])), variables)
  inputs = [official.prepare(im) for im in images[:2]]
  want = official.collect(official.dispatch(inputs))
  got = dark.collect(dark.dispatch(inputs))
  got_device = on_device.collect(on_device.dispatch(inputs))
  moved = 0
  for inp, g, gd, w in zip(inputs, got, got_device, want):
    np.testing.assert_array_equal(g.scores, w.scores)
    np.testing.assert_array_equal(g.poses[..., 2:], w.poses[..., 2:])
    np.testing.assert_array_equal(gd.poses, g.poses)
    # Heatmap pixels at image resolution map back by the image / input size ratio (<= 1
    # scale for these inputs, plus float32 rounding of the affine map).
    px = np.asarray(inp.scale, np.float64) * 200 / np.asarray(inp.base_size, np.float64)
    assert np.abs(g.poses[..., :2] - w.poses[..., :2]).max() <= 0.75 * np.max(px) + 1e-3
    moved += int(np.sum(np.abs(g.poses[..., :2] - w.poses[..., :2]) > 1e-3))
  assert moved > 0
