"""Drawing predicted people: skeletons over the image (for eval samples and the demo)."""

from __future__ import annotations

import colorsys
import pathlib

import cv2
import numpy as np

from higherhrnet_jax.keypoints import KeypointSpec


def _person_colour(i: int) -> tuple[int, int, int]:
  r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85, 1.0)
  return int(255 * r), int(255 * g), int(255 * b)


def draw_poses(image: np.ndarray, poses: np.ndarray, spec: KeypointSpec,
               joint_threshold: float = 0.1, scores: np.ndarray | None = None,
               score_threshold: float = 0.0) -> np.ndarray:
  """Returns a copy of an RGB uint8 image with one coloured skeleton per person.

  Args:
    image: [H, W, 3] uint8 RGB.
    poses: [P, K, >=3] (x, y, score, ...) in image pixels.
    spec: the keypoint spec (skeleton edges).
    joint_threshold: joints with a lower score are not drawn.
    scores: optional [P] person scores; people below `score_threshold` are skipped.
    score_threshold: see `scores`.
  """
  canvas = np.ascontiguousarray(image[..., :3].copy())
  thickness = max(1, round(max(canvas.shape[:2]) / 300))
  for i, person in enumerate(np.asarray(poses)):
    if scores is not None and scores[i] < score_threshold:
      continue
    colour = _person_colour(i)
    ok = person[:, 2] > joint_threshold
    pts = np.round(person[:, :2]).astype(int)
    for a, b in spec.skeleton:
      if ok[a] and ok[b]:
        cv2.line(canvas, tuple(pts[a]), tuple(pts[b]), colour, thickness, cv2.LINE_AA)
    for k in np.flatnonzero(ok):
      cv2.circle(canvas, tuple(pts[k]), thickness + 1, colour, -1, cv2.LINE_AA)
  return canvas


def save_rgb(path: str | pathlib.Path, image: np.ndarray) -> None:
  """Writes an RGB uint8 image (PNG/JPEG by extension)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
    raise OSError(f'could not write image {path}')
