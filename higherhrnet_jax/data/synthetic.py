"""Procedurally rendered multi-person scenes in COCO keypoint format.

The scenes are the default data for the quickstart and for tests, so they are made to be
*learnable* by a small network in minutes while still needing everything a bottom-up
model does: every joint type has its own marker (colour and shape), limbs are thick
strokes, people come in several sizes, stand next to and in front of each other, are cut
by the image border and by occluders, and some images hold crowd regions that the loss
must ignore.

Left/right are told apart the way they are in photographs: by a cue that mirrors under a
horizontal flip. A left joint's marker is a triangle pointing to the image right, the right
joint's marker is its mirror image with the same colour, and every figure faces the camera
(its left side on the image right). A flipped left marker therefore looks exactly like a
right marker, which is what the flip augmentation (joint swap by ``flip_index``) assumes.

Everything is a pure function of ``(seed, split, image index)``.

  python -m higherhrnet_jax.data.synthetic --out data/synthetic --num-train 2000 --num-val 200
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import zlib
from collections.abc import Sequence

import cv2
import numpy as np

from higherhrnet_jax import config as config_lib
from higherhrnet_jax import keypoints

_log = logging.getLogger(__name__)

_SPEC = keypoints.COCO
K = _SPEC.num_joints
_J = {name: i for i, name in enumerate(_SPEC.joint_names)}

# One colour (BGR) per joint *pair*: a left joint and its right twin share the colour and
# differ only by the mirrored marker shape.
_PAIR_COLOURS = {
    'nose': (255, 255, 255),
    'eye': (0, 255, 255),
    'ear': (255, 0, 255),
    'shoulder': (0, 0, 255),
    'elbow': (0, 255, 0),
    'wrist': (255, 0, 0),
    'hip': (0, 128, 255),
    'knee': (255, 255, 0),
    'ankle': (128, 0, 255),
}
# Markers are drawn body first, extremities and face last: where markers overlap (small
# people), the end of a limb stays visible.
_MARKER_ORDER = tuple(_J[n] for n in (
    'left_hip', 'right_hip', 'left_shoulder', 'right_shoulder', 'left_knee', 'right_knee',
    'left_elbow', 'right_elbow', 'left_ankle', 'right_ankle', 'left_wrist', 'right_wrist',
    'left_ear', 'right_ear', 'left_eye', 'right_eye', 'nose'))
_FACE = frozenset(_J[n] for n in ('nose', 'left_eye', 'right_eye', 'left_ear', 'right_ear'))
_FIXED_POINT = 4  # cv2 `shift`: coordinates carry 4 fractional bits
_SCALE = 1 << _FIXED_POINT


def _joint_colour(name: str) -> tuple[int, int, int]:
  return _PAIR_COLOURS[name.split('_')[-1]]


def _fp(points: np.ndarray) -> np.ndarray:
  return np.round(np.asarray(points, np.float64) * _SCALE).astype(np.int32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
  """Smooth muted colour field plus pixel noise and a few faint distractor strokes."""
  coarse = rng.uniform(50, 170, (4, 4, 3)).astype(np.float32)
  image = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
  image += rng.normal(0.0, 8.0, image.shape).astype(np.float32)
  image = np.clip(image, 0, 255).astype(np.uint8)
  for _ in range(rng.integers(0, 4)):
    p = rng.uniform(0, size, (2, 2))
    grey = int(rng.uniform(60, 190))
    cv2.line(image, tuple(_fp(p[0])), tuple(_fp(p[1])), (grey, grey, grey),
             int(rng.integers(1, 3)), cv2.LINE_AA, _FIXED_POINT)
  return image


def _pose(rng: np.random.Generator, height: float, centre: np.ndarray) -> np.ndarray:
  """Joint positions [K, 2] (x, y) of a camera-facing figure `height` pixels tall."""

  def limb(start, length, angle_deg, side):
    a = np.deg2rad(angle_deg)
    return start + length * np.array([side * np.sin(a), np.cos(a)])

  p = np.zeros((K, 2))
  h = 1.0
  head = np.array([0.0, -0.45])
  p[_J['nose']] = head + [0.0, 0.035]
  for side, s in (('left', 1.0), ('right', -1.0)):
    p[_J[f'{side}_eye']] = head + [s * 0.045, -0.02]
    p[_J[f'{side}_ear']] = head + [s * 0.105, 0.0]
    shoulder = np.array([s * 0.14, -0.30])
    hip = np.array([s * 0.09, 0.0])
    p[_J[f'{side}_shoulder']] = shoulder
    p[_J[f'{side}_hip']] = hip
    upper = rng.uniform(-20, 150)
    p[_J[f'{side}_elbow']] = limb(shoulder, 0.17 * h, upper, s)
    p[_J[f'{side}_wrist']] = limb(p[_J[f'{side}_elbow']], 0.15 * h, upper + rng.uniform(-80, 80), s)
    thigh = rng.uniform(-10, 40)
    p[_J[f'{side}_knee']] = limb(hip, 0.23 * h, thigh, s)
    p[_J[f'{side}_ankle']] = limb(p[_J[f'{side}_knee']], 0.23 * h, thigh + rng.uniform(-40, 15), s)
  # Body turned a little (narrower) and leaning a little; pelvis at the origin.
  p[:, 0] *= rng.uniform(0.8, 1.0)
  lean = rng.normal(0.0, 0.12)
  rot = np.array([[np.cos(lean), -np.sin(lean)], [np.sin(lean), np.cos(lean)]])
  return (p @ rot.T) * height + centre


def _marker(image: np.ndarray, name: str, xy: np.ndarray, r: float, colour) -> None:
  x, y = xy
  if name.startswith('left_'):  # triangle pointing to the image right, centroid at (x, y)
    tri = np.array([[x - 0.7 * r, y - r], [x - 0.7 * r, y + r], [x + 1.4 * r, y]])
  elif name.startswith('right_'):  # its mirror image
    tri = np.array([[x + 0.7 * r, y - r], [x + 0.7 * r, y + r], [x - 1.4 * r, y]])
  else:
    cv2.circle(image, tuple(_fp(xy)), int(round(r * 1.2 * _SCALE)), colour, -1, cv2.LINE_AA,
               _FIXED_POINT)
    return
  cv2.fillPoly(image, [_fp(tri)], colour, cv2.LINE_AA, _FIXED_POINT)


def _draw_figure(canvas: np.ndarray, pts: np.ndarray, height: float, body, skin,
                 markers: bool) -> None:
  """Draws torso, limbs, head and (optionally) joint markers onto `canvas` (image or mask)."""
  thick = max(1, int(round(0.045 * height)))
  torso = pts[[_J['left_shoulder'], _J['right_shoulder'], _J['right_hip'], _J['left_hip']]]
  cv2.fillPoly(canvas, [_fp(torso)], body, cv2.LINE_AA, _FIXED_POINT)
  for side in ('left', 'right'):
    for a, b in (('shoulder', 'elbow'), ('elbow', 'wrist'), ('hip', 'knee'), ('knee', 'ankle')):
      cv2.line(canvas, tuple(_fp(pts[_J[f'{side}_{a}']])), tuple(_fp(pts[_J[f'{side}_{b}']])),
               body, thick, cv2.LINE_AA, _FIXED_POINT)
  neck = (pts[_J['left_shoulder']] + pts[_J['right_shoulder']]) / 2
  head = (pts[_J['left_ear']] + pts[_J['right_ear']]) / 2
  cv2.line(canvas, tuple(_fp(neck)), tuple(_fp(head)), body, thick, cv2.LINE_AA, _FIXED_POINT)
  axes = (max(1.0, 0.11 * height), max(1.0, 0.12 * height))
  cv2.ellipse(canvas, tuple(_fp(head)), tuple(int(round(a * _SCALE)) for a in axes), 0, 0, 360,
              skin, -1, cv2.LINE_AA, _FIXED_POINT)
  if markers:
    for k in _MARKER_ORDER:
      name = _SPEC.joint_names[k]
      colour = _joint_colour(name) if canvas.ndim == 3 else body
      r = max(1.2, 0.02 * height) if k in _FACE else max(1.5, 0.03 * height)
      _marker(canvas, name, pts[k], r, colour)


def _polygons(mask: np.ndarray) -> list[list[float]]:
  contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                 cv2.CHAIN_APPROX_SIMPLE)
  polys = []
  for c in contours:
    if len(c) >= 3:
      polys.append([float(v) for v in c.reshape(-1)])
  return polys


def _bbox(mask: np.ndarray) -> list[float]:
  ys, xs = np.nonzero(mask)
  return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
          float(ys.max() - ys.min() + 1)]


def _uncompressed_rle(mask: np.ndarray) -> dict:
  """COCO's crowd encoding: run lengths over the column-major flattened mask, zeros first."""
  flat = mask.astype(np.uint8).flatten(order='F')
  change = np.flatnonzero(np.diff(flat)) + 1
  bounds = np.concatenate([[0], change, [flat.size]])
  counts = np.diff(bounds).tolist()
  if flat[0]:
    counts = [0] + counts
  return {'counts': [int(c) for c in counts], 'size': [int(mask.shape[0]), int(mask.shape[1])]}


def render_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[dict]]:
  """Renders one scene.

  Args:
    rng: the scene's generator (the scene is a pure function of its state).
    size: image side in pixels.

  Returns:
    (image [size, size, 3] uint8 BGR, annotations without ids): each annotation has
    'keypoints' (flat 51), 'num_keypoints', 'iscrowd', 'bbox', 'area', 'segmentation'.
  """
  image = _background(rng, size)
  owner = np.full((size, size), -1, np.int32)  # topmost figure per pixel (for occlusion)
  figures = []

  # Crowd region first (behind everybody): tiny unannotatable figures, masked by the loss.
  crowd = None
  if rng.uniform() < 0.15:
    w, h = rng.uniform(0.25, 0.45, 2) * size
    x0, y0 = rng.uniform(0, size - w), rng.uniform(0, size - h)
    region = np.zeros((size, size), np.uint8)
    for _ in range(rng.integers(3, 7)):
      fh = rng.uniform(0.07, 0.11) * size
      c = np.array([rng.uniform(x0 + fh * 0.2, x0 + w - fh * 0.2),
                    rng.uniform(y0 + fh * 0.5, y0 + h)])
      pts = _pose(rng, fh, c)
      colour = tuple(int(v) for v in rng.uniform(40, 220, 3))
      _draw_figure(image, pts, fh, colour, colour, markers=False)
      _draw_figure(region, pts, fh, 1, 1, markers=False)
    ys, xs = np.nonzero(region)
    if xs.size:
      box = np.zeros((size, size), np.uint8)
      box[int(ys.min()):int(ys.max()) + 1, int(xs.min()):int(xs.max()) + 1] = 1
      crowd = box

  num_people = int(rng.integers(1, 7))
  for i in range(num_people):
    height = rng.uniform(0.3, 0.8) * size
    if figures and rng.uniform() < 0.5:  # stand next to somebody: grouping must work
      ref = figures[int(rng.integers(len(figures)))]
      side = rng.choice([-1.0, 1.0])
      centre = ref['centre'] + [side * rng.uniform(0.2, 0.5) * max(height, ref['height']),
                                rng.uniform(-0.15, 0.15) * height]
    else:
      centre = np.array([rng.uniform(0.1, 0.9) * size, rng.uniform(0.35, 0.8) * size])
    pts = _pose(rng, height, centre)
    body = tuple(int(v) for v in rng.uniform(30, 200, 3))
    skin = tuple(int(v) for v in rng.uniform(90, 230, 3))
    _draw_figure(image, pts, height, body, skin, markers=True)
    sil = np.zeros((size, size), np.uint8)
    _draw_figure(sil, pts, height, 1, 1, markers=True)
    owner[sil > 0] = i
    figures.append(dict(pts=pts, height=height, centre=centre, sil=sil > 0, tiny=False))

  # Tiny people: visible but too small to label (num_keypoints 0), as in COCO.
  for _ in range(rng.integers(0, 3) if rng.uniform() < 0.3 else 0):
    fh = rng.uniform(0.08, 0.12) * size
    c = rng.uniform(0.1, 0.9, 2) * size
    pts = _pose(rng, fh, c)
    colour = tuple(int(v) for v in rng.uniform(40, 220, 3))
    _draw_figure(image, pts, fh, colour, colour, markers=False)
    sil = np.zeros((size, size), np.uint8)
    _draw_figure(sil, pts, fh, 1, 1, markers=False)
    owner[sil > 0] = len(figures)
    figures.append(dict(pts=pts, height=fh, centre=c, sil=sil > 0, tiny=True))

  occluded = np.zeros((size, size), bool)
  if rng.uniform() < 0.2:  # a textured box in front of part of the scene
    w, h = rng.uniform(0.1, 0.3, 2) * size
    x0, y0 = int(rng.uniform(0, size - w)), int(rng.uniform(0, size - h))
    x1, y1 = int(x0 + w), int(y0 + h)
    patch = rng.normal(rng.uniform(60, 190), 12.0, (y1 - y0, x1 - x0, 3))
    image[y0:y1, x0:x1] = np.clip(patch, 0, 255).astype(np.uint8)
    occluded[y0:y1, x0:x1] = True

  annotations = []
  for i, fig in enumerate(figures):
    visible = fig['sil'] & (owner == i) & ~occluded
    if not visible.any():
      continue
    kps = np.zeros((K, 3))
    if not fig['tiny']:
      for k, (x, y) in enumerate(np.round(fig['pts'], 2)):  # as written to the JSON
        if 0 <= x < size and 0 <= y < size:
          xi, yi = int(x), int(y)
          kps[k] = (x, y, 2 if visible[yi, xi] else 1)
    polys = _polygons(visible)
    if not polys:
      continue
    annotations.append(dict(
        keypoints=[round(float(v), 2) for v in kps.reshape(-1)],
        num_keypoints=int((kps[:, 2] > 0).sum()), iscrowd=0, bbox=_bbox(visible),
        area=float(visible.sum()), segmentation=polys))
  if crowd is not None:
    annotations.append(dict(keypoints=[0] * (3 * K), num_keypoints=0, iscrowd=1, bbox=_bbox(crowd),
                            area=float(crowd.sum()), segmentation=_uncompressed_rle(crowd)))
  return image, annotations


def write_synthetic_coco(root: str | pathlib.Path, num_images: int, seed: int = 0, *,
                         image_size: int = 128, split: str = 'train2017',
                         jpeg_quality: int = 95) -> pathlib.Path:
  """Writes `num_images` scenes in the official COCO layout under `root`.

  Layout: `root/images/{split}/{id:012d}.jpg` and
  `root/annotations/person_keypoints_{split}.json`, so a config only needs
  `dataset.root`, `dataset.train_split` and `dataset.test_split`.

  Args:
    root: output folder (created).
    num_images: number of scenes.
    seed: scenes are a pure function of (seed, split, index).
    image_size: square image side in pixels.
    split: split name (also salts the seed, so splits never share scenes).
    jpeg_quality: JPEG quality of the written images.

  Returns:
    The annotation file path.
  """
  root = pathlib.Path(root)
  image_dir = root / 'images' / split
  image_dir.mkdir(parents=True, exist_ok=True)
  (root / 'annotations').mkdir(parents=True, exist_ok=True)
  salt = zlib.crc32(split.encode())
  id_base = (salt % 1000 + 1) * 1_000_000  # distinct, stable image ids per split
  images, annotations = [], []
  for index in range(num_images):
    rng = np.random.default_rng(np.random.SeedSequence([seed, salt, index]))
    image, anns = render_scene(rng, image_size)
    image_id = id_base + index
    file_name = f'{image_id:012d}.jpg'
    ok, buf = cv2.imencode('.jpg', image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    if not ok:
      raise RuntimeError(f'could not encode synthetic image {file_name}')
    (image_dir / file_name).write_bytes(buf.tobytes())
    images.append(dict(id=image_id, file_name=file_name, height=image_size, width=image_size))
    for ann in anns:
      annotations.append(dict(id=len(annotations) + 1, image_id=image_id, category_id=1, **ann))
  categories = [dict(id=1, name='person', supercategory='person', keypoints=list(_SPEC.joint_names),
                     skeleton=[[a + 1, b + 1] for a, b in _SPEC.skeleton])]
  payload = dict(info=dict(description=f'synthetic stick-figure scenes, seed {seed}'),
                 licenses=[], images=images, annotations=annotations, categories=categories)
  path = root / 'annotations' / f'person_keypoints_{split}.json'
  path.write_text(json.dumps(payload))
  return path


def prepare(config: config_lib.ConfigDict, workdir: str | pathlib.Path) -> config_lib.ConfigDict:
  """Writes the configured synthetic dataset if it is not there yet; returns the config.

  With `dataset.synthetic.num_train > 0` the scenes go to `dataset.root`, or to
  `<workdir>/data` when the root is empty (the returned config then points there).
  """
  syn = config.dataset.get('synthetic')  # HigherHRNet configs only
  if syn is None or syn.num_train <= 0:
    return config
  root = pathlib.Path(config.dataset.root or pathlib.Path(workdir) / 'data')
  if config.dataset.root != str(root):
    config = config_lib.apply_overrides(config.copy_and_resolve_references(),
                                        [f'dataset.root={root}'])
  for split, n in ((config.dataset.train_split, syn.num_train), (config.dataset.test_split, syn.num_val)):
    ann = root / 'annotations' / f'person_keypoints_{split}.json'
    if n > 0 and not ann.is_file():
      _log.info('writing %d synthetic scenes to %s', n, root / 'images' / split)
      write_synthetic_coco(root, n, syn.seed, image_size=syn.image_size, split=split)
  return config


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', required=True, help='output folder (COCO layout)')
  parser.add_argument('--num-train', type=int, default=2000)
  parser.add_argument('--num-val', type=int, default=200)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--image-size', type=int, default=128)
  parser.add_argument('--train-split', default='train2017')
  parser.add_argument('--val-split', default='val2017')
  args = parser.parse_args(argv)
  for split, n in ((args.train_split, args.num_train), (args.val_split, args.num_val)):
    path = write_synthetic_coco(args.out, n, args.seed, image_size=args.image_size, split=split)
    print(f'wrote {n} images: {path}')


if __name__ == '__main__':
  main()
