"""The demo draws skeletons for an image, a folder and a video."""

import json

import cv2
import numpy as np
import pytest

from higherhrnet_jax import demo


@pytest.fixture(scope='module')
def weights(fixtures_dir):
  return str(fixtures_dir / 'tiny_state_dict.npz')


def test_demo_image_and_folder(tmp_path, weights, coco_sample_dir):
  folder = tmp_path / 'in'
  folder.mkdir()
  image = cv2.imread(str(coco_sample_dir / '000000000785.jpg'))
  cv2.imwrite(str(folder / 'a.jpg'), image)
  (folder / 'broken.jpg').write_bytes(b'not a jpeg')
  demo.main(['--config=configs/tiny.py', f'--checkpoint={weights}', f'--input={folder}',
             f'--output={tmp_path / "out"}'])
  drawn = cv2.imread(str(tmp_path / 'out' / 'a.png'))
  assert drawn.shape == image.shape and not np.array_equal(drawn, image)
  people = json.loads((tmp_path / 'out' / 'a.json').read_text())
  assert people and len(people[0]['keypoints']) == 17
  assert not (tmp_path / 'out' / 'broken.png').exists()


def test_demo_video(tmp_path, weights):
  path = tmp_path / 'clip.mp4'
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), 5.0, (96, 64))
  rng = np.random.default_rng(0)
  for _ in range(3):
    writer.write(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
  writer.release()
  demo.main(['--config=configs/tiny.py', f'--checkpoint={weights}', f'--input={path}',
             f'--output={tmp_path / "out"}'])
  cap = cv2.VideoCapture(str(tmp_path / 'out' / 'clip.mp4'))
  frames = 0
  while cap.read()[0]:
    frames += 1
  assert frames == 3


def test_demo_top_down_with_boxes_and_with_a_people_model(tmp_path, weights, coco_sample_dir,
                                                          topdown_fixtures_dir):
  td = str(topdown_fixtures_dir / 'tiny_state_dict.npz')
  boxes = tmp_path / 'boxes.json'
  boxes.write_text(json.dumps([[100, 50, 120, 300], [300, 60, 100, 280]]))
  image = coco_sample_dir / '000000000785.jpg'
  demo.main(['--config=configs/coco/hrnet_tiny.py', f'--checkpoint={td}', f'--input={image}',
             f'--output={tmp_path / "a"}', f'--boxes={boxes}'])
  people = json.loads((tmp_path / 'a' / '000000000785.json').read_text())
  assert 1 <= len(people) <= 2 and len(people[0]['keypoints']) == 17
  demo.main(['--config=configs/coco/hrnet_tiny.py', f'--checkpoint={td}', f'--input={image}',
             f'--output={tmp_path / "b"}', '--people_config=configs/tiny.py',
             f'--people_checkpoint={weights}'])
  assert (tmp_path / 'b' / '000000000785.png').is_file()
  with pytest.raises(SystemExit):  # a top-down model without people
    demo.main(['--config=configs/coco/hrnet_tiny.py', f'--checkpoint={td}', f'--input={image}',
               f'--output={tmp_path / "c"}'])
