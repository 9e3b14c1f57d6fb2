"""Draws predicted skeletons on an image, a folder of images or a video.

  python -m higherhrnet_jax.demo --config=configs/coco/higherhrnet_w32_512.py \
      --checkpoint=pose_higher_hrnet_w32_512.pth --input=people.jpg --output=out/

Top-down models need the people: a HigherHRNet that finds them, or boxes:

  python -m higherhrnet_jax.demo --config=configs/coco/hrnet_w32_256x192.py \
      --checkpoint=pose_hrnet_w32_256x192.pth --input=people.jpg --output=out/ \
      --people_config=configs/coco/higherhrnet_w32_512.py \
      --people_checkpoint=pose_higher_hrnet_w32_512.pth      # or --boxes=boxes.json

(`boxes.json`: a list of `[x, y, w, h]` person boxes in image pixels, used for every input.)

Images give `<name>.png` with the skeletons and `<name>.json` with the people (joints in
image pixels, joint scores, person score); a video gives `<name>.mp4` (same frame rate).
"""

from __future__ import annotations

import json
import pathlib
import sys

import cv2
import numpy as np
from absl import flags

from higherhrnet_jax import apps, config as config_lib, keypoints, visualize, weights
from higherhrnet_jax.data.coco import CorruptImageError, decode_image
from higherhrnet_jax.inference.predictor import Prediction, Predictor
from higherhrnet_jax.topdown import detector_free

IMAGE_SUFFIXES = {'.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff'}
VIDEO_SUFFIXES = {'.mp4', '.avi', '.mov', '.mkv', '.webm'}


def _people_json(pred: Prediction) -> list[dict]:
  return [{'keypoints': p[:, :3].round(2).tolist(), 'score': float(s)}
          for p, s in zip(pred.poses, pred.scores)]


def run_images(predictor: Predictor, paths: list[pathlib.Path], out: pathlib.Path,
               spec: keypoints.KeypointSpec, score_threshold: float) -> int:
  """Predicts and draws every readable image; returns how many were skipped."""
  skipped = 0
  for path in paths:
    try:
      image = decode_image(path)
    except CorruptImageError as e:
      print(f'skipping {path}: {e}', file=sys.stderr)
      skipped += 1
      continue
    pred = predictor(image)
    drawn = visualize.draw_poses(image, pred.poses, spec, scores=pred.scores,
                                 score_threshold=score_threshold)
    visualize.save_rgb(out / f'{path.stem}.png', drawn)
    (out / f'{path.stem}.json').write_text(json.dumps(_people_json(pred)))
    print(f'{path.name}: {len(pred.scores)} people')
  return skipped


def run_video(predictor: Predictor, path: pathlib.Path, out: pathlib.Path,
              spec: keypoints.KeypointSpec, score_threshold: float) -> int:
  """Predicts every frame of a video and writes `<name>.mp4`; returns the frame count."""
  cap = cv2.VideoCapture(str(path))
  if not cap.isOpened():
    raise ValueError(f'--input: cannot open video {path}')
  fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
  writer, frames = None, 0
  try:
    while True:
      ok, bgr = cap.read()
      if not ok:
        break
      rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
      pred = predictor(rgb)
      drawn = visualize.draw_poses(rgb, pred.poses, spec, scores=pred.scores,
                                   score_threshold=score_threshold)
      if writer is None:
        h, w = drawn.shape[:2]
        writer = cv2.VideoWriter(str(out / f'{path.stem}.mp4'), cv2.VideoWriter_fourcc(*'mp4v'),
                                 fps, (w, h))
      writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
      frames += 1
  finally:
    cap.release()
    if writer is not None:
      writer.release()
  if frames == 0:
    raise ValueError(f'--input: no frame could be read from {path}')
  return frames


def _two_stage(fv: flags.FlagValues, config, variables):
  """The top-down predictor, people from `--boxes` or from `--people_config` / checkpoint."""
  if bool(fv.boxes) == bool(fv.people_config):
    raise SystemExit('a top-down config needs exactly one of --boxes and --people_config')
  people = None
  if fv.people_config:
    if not fv.people_checkpoint:
      raise SystemExit('--people_config needs --people_checkpoint')
    people_config = config_lib.load_config(fv.people_config)
    people = (people_config, weights.load(fv.people_checkpoint, people_config.model))
  two_stage = detector_free.make(config, variables, people)
  if not fv.boxes:
    return two_stage
  try:
    boxes = np.asarray(json.loads(pathlib.Path(fv.boxes).read_text()), np.float64)
  except (OSError, ValueError) as e:
    raise SystemExit(f'--boxes: cannot read {fv.boxes}: {e}') from None
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    raise SystemExit(f'--boxes: {fv.boxes} must hold a list of [x, y, w, h], got shape '
                     f'{boxes.shape}')
  return lambda image: two_stage(image, boxes)


def _define(fv: flags.FlagValues) -> None:
  flags.DEFINE_string('checkpoint', None, 'Official .pth/.npz or training workdir.',
                      flag_values=fv, required=True)
  flags.DEFINE_string('input', None, 'Image, folder of images, or video.', flag_values=fv,
                      required=True)
  flags.DEFINE_string('output', None, 'Output folder.', flag_values=fv, required=True)
  flags.DEFINE_float('score_threshold', 0.1, 'People drawn above this score.', flag_values=fv)
  flags.DEFINE_string('boxes', '', 'Top-down: JSON list of [x, y, w, h] person boxes.',
                      flag_values=fv)
  flags.DEFINE_string('people_config', '', 'Top-down: HigherHRNet config finding people.',
                      flag_values=fv)
  flags.DEFINE_string('people_checkpoint', '', 'Top-down: its checkpoint.', flag_values=fv)


def main(argv: list[str] | None = None) -> None:
  fv = apps.parse_tool_flags(sys.argv[1:] if argv is None else argv,
                             'python -m higherhrnet_jax.demo', _define)
  config = config_lib.validate(fv.config)
  variables = weights.load(fv.checkpoint, config.model)
  if config.model.name == 'pose_hrnet':
    predictor = _two_stage(fv, config, variables)
  else:
    if fv.boxes or fv.people_config:
      raise SystemExit('--boxes / --people_config apply to top-down configs only')
    predictor = Predictor(config, variables)
  spec = keypoints.spec_from_config(config.dataset.keypoints)
  src, out = pathlib.Path(fv.input), pathlib.Path(fv.output)
  out.mkdir(parents=True, exist_ok=True)
  if src.is_dir():
    paths = sorted(q for q in src.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
      raise SystemExit(f'--input: no images in {src}')
    run_images(predictor, paths, out, spec, fv.score_threshold)
  elif src.suffix.lower() in VIDEO_SUFFIXES:
    n = run_video(predictor, src, out, spec, fv.score_threshold)
    print(f'{src.name}: {n} frames -> {out / (src.stem + ".mp4")}')
  elif src.is_file():
    run_images(predictor, [src], out, spec, fv.score_threshold)
  else:
    raise SystemExit(f'--input: not found: {src}')


if __name__ == '__main__':
  main()
