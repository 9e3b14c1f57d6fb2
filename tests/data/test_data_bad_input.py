"""Bad input: every case of the data-pipeline issue, item 8, built in tmp_path.

Decoding follows the official `cv2.imread(IMREAD_COLOR | IMREAD_IGNORE_ORIENTATION)` + RGB.
Structural annotation problems fail at construction naming file and record; per-image
problems raise `CorruptImageError` (the loader skips and counts those).
"""

import io
import json
import struct

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_api

from higherhrnet_jax import config as config_lib
from higherhrnet_jax.data import coco, transforms

K = 17


def _person(ann_id, image_id, kps=None, **extra):
  kps = kps if kps is not None else [10.0, 12.0, 2] * K
  a = {'id': ann_id, 'image_id': image_id, 'iscrowd': 0, 'category_id': 1, 'keypoints': kps,
       'num_keypoints': sum(1 for v in kps[2::3] if v > 0), 'bbox': [0, 0, 20, 30],
       'segmentation': [[0, 0, 20, 0, 20, 30, 0, 30]], 'area': 600.0}
  a.update(extra)
  return a


def _write(tmp_path, images, annotations, name='ann.json', h=48, w=64):
  """Writes a COCO file and black JPEGs for the images (h x w)."""
  data = {'images': images, 'annotations': annotations, 'categories': [{'id': 1, 'name': 'person'}]}
  path = tmp_path / name
  path.write_text(json.dumps(data))
  for img in images:
    if isinstance(img, dict) and isinstance(img.get('file_name'), str):
      cv2.imwrite(str(tmp_path / img['file_name']), np.zeros((h, w, 3), np.uint8))
  return path


def _image(image_id, h=48, w=64):
  return {'id': image_id, 'file_name': f'{image_id}.jpg', 'height': h, 'width': w}


# ----------------------------------------------------------------------------- images


def test_missing_image(tmp_path):
  with pytest.raises(coco.MissingImageError, match='not found'):
    coco.decode_image(tmp_path / 'nope.jpg')
  assert issubclass(coco.MissingImageError, coco.CorruptImageError)


@pytest.mark.parametrize('content', [b'', b'not an image at all', b'\xff\xd8\xff\xe0garbage'])
def test_corrupt_image(tmp_path, content):
  path = tmp_path / 'bad.jpg'
  path.write_bytes(content)
  with pytest.raises(coco.CorruptImageError, match='bad.jpg'):
    coco.decode_image(path)
  with pytest.raises(coco.CorruptImageError):
    coco.decode_image(content)


def test_truncated_jpeg(tmp_path):
  rng = np.random.default_rng(0)
  ok, enc = cv2.imencode('.jpg', rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
  assert ok
  with pytest.raises(coco.CorruptImageError):
    coco.decode_image(enc.tobytes()[: enc.size // 2])


def test_grayscale_png(tmp_path):
  gray = np.arange(48 * 64, dtype=np.uint32).reshape(48, 64).astype(np.uint8)
  path = tmp_path / 'g.png'
  cv2.imwrite(str(path), gray)
  img = coco.decode_image(path)
  assert img.shape == (48, 64, 3) and img.dtype == np.uint8
  for c in range(3):
    np.testing.assert_array_equal(img[..., c], gray)


def test_rgba_png_drops_alpha_and_is_rgb(tmp_path):
  bgra = np.zeros((8, 9, 4), np.uint8)
  bgra[...] = (10, 20, 30, 0)  # fully transparent: the colour is still what is decoded
  path = tmp_path / 'a.png'
  cv2.imwrite(str(path), bgra)
  img = coco.decode_image(path)
  assert img.shape == (8, 9, 3)
  np.testing.assert_array_equal(img[0, 0], [30, 20, 10])  # RGB order


def test_cmyk_jpeg(tmp_path):
  pil = pytest.importorskip('PIL.Image')
  cmyk = np.zeros((20, 30, 4), np.uint8)
  cmyk[...] = (200, 10, 50, 0)
  buf = io.BytesIO()
  pil.fromarray(cmyk, 'CMYK').save(buf, 'JPEG', quality=100)
  img = coco.decode_image(buf.getvalue())
  assert img.shape == (20, 30, 3) and img.dtype == np.uint8
  reference = np.asarray(pil.open(io.BytesIO(buf.getvalue())).convert('RGB'))
  assert np.abs(img.astype(int) - reference.astype(int)).max() <= 3


def test_16bit_png(tmp_path):
  bgr16 = np.zeros((5, 6, 3), np.uint16)
  bgr16[...] = (1000, 40000, 65535)
  path = tmp_path / 'deep.png'
  cv2.imwrite(str(path), bgr16)
  img = coco.decode_image(path)
  assert img.dtype == np.uint8 and img.shape == (5, 6, 3)
  expected_rgb = np.array([65535, 40000, 1000]) / 256
  assert np.abs(img[0, 0] - expected_rgb).max() <= 1


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
  """Inserts an APP1/Exif segment holding only the orientation tag (0x0112)."""
  tiff = (b'MM\x00\x2a' + struct.pack('>I', 8) + struct.pack('>H', 1) +
          struct.pack('>HHI', 0x0112, 3, 1) + struct.pack('>HH', orientation, 0) +
          struct.pack('>I', 0))
  payload = b'Exif\x00\x00' + tiff
  return jpeg[:2] + b'\xff\xe1' + struct.pack('>H', len(payload) + 2) + payload + jpeg[2:]


def test_exif_rotated_jpeg_is_not_rotated(tmp_path):
  img = np.zeros((20, 40, 3), np.uint8)
  img[:, :10] = 255
  ok, enc = cv2.imencode('.jpg', img)
  data = _with_exif_orientation(enc.tobytes(), 6)
  # The tag is effective: a plain IMREAD_COLOR decode rotates the image ...
  assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == (40, 20, 3)
  # ... but the official reader (and annotations) use the stored pixel frame.
  path = tmp_path / 'exif.jpg'
  path.write_bytes(data)
  out = coco.decode_image(path)
  assert out.shape == (20, 40, 3)
  assert out[:, :5].mean() > 200 and out[:, 20:].mean() < 20


def test_image_size_mismatch_is_a_per_image_error(tmp_path):
  path = _write(tmp_path, [_image(1)], [_person(1, 1)], h=30, w=30)
  src = coco.coco_source(path, tmp_path)
  with pytest.raises(coco.CorruptImageError, match='decoded size'):
    src.load_image(0)


def test_missing_image_in_source(tmp_path):
  path = _write(tmp_path, [_image(1)], [_person(1, 1)])
  (tmp_path / '1.jpg').unlink()
  src = coco.coco_source(path, tmp_path)
  with pytest.raises(coco.MissingImageError):
    src.train_example(0)
  assert src.joints(0).shape == (1, K, 3)  # annotations still usable


# ----------------------------------------------------------------------------- annotations


def test_duplicate_image_ids(tmp_path):
  path = _write(tmp_path, [_image(5), _image(5)], [_person(1, 5)])
  with pytest.raises(coco.AnnotationError, match=r'ann\.json.*images\[1\].*duplicate image id 5'):
    coco.coco_source(path, tmp_path)


def test_duplicate_annotation_ids(tmp_path):
  path = _write(tmp_path, [_image(5)], [_person(7, 5), _person(7, 5)])
  with pytest.raises(coco.AnnotationError, match=r'annotations\[1\].*duplicate annotation id 7'):
    coco.coco_source(path, tmp_path)


@pytest.mark.parametrize('mutate, message', [
    (lambda d: d.pop('annotations'), "missing or non-list field 'annotations'"),
    (lambda d: d['annotations'][0].update(keypoints=[1, 2, 2] * 3), 'list of 51 numbers'),
    (lambda d: d['annotations'][0].update(keypoints=[float('nan')] * 51), 'non-finite'),
    (lambda d: d['annotations'][0].update(image_id=99), 'image_id 99 is not in images'),
    (lambda d: d['annotations'][0].update(image_id=[1]), 'image_id [1] is not in images'),
    (lambda d: d['annotations'][0].update(keypoints=['x'] * 51), 'non-numeric'),
    (lambda d: d['annotations'][0].update(segmentation={'counts': [1]}, num_keypoints=0),
     "RLE segmentation needs 'counts' and 'size'"),
    (lambda d: d['annotations'][0].pop('id'), "field 'id' must be an integer"),
    (lambda d: d.update(images={}), "missing or non-list field 'images'"),
    (lambda d: d['images'][0].update(height=0), "'height' must be a positive integer"),
    (lambda d: d['images'][0].pop('file_name'), "'file_name'"),
    (lambda d: d['annotations'][0].update(iscrowd=3), "'iscrowd' must be 0 or 1"),
])
def test_structural_errors_name_file_and_record(tmp_path, mutate, message):
  data = {'images': [_image(1)], 'annotations': [_person(3, 1)]}
  mutate(data)
  path = tmp_path / 'broken.json'
  path.write_text(json.dumps(data))
  with pytest.raises(coco.AnnotationError) as e:
    coco.coco_source(path, tmp_path)
  assert 'broken.json' in str(e.value) and message in str(e.value)


def test_not_json_and_missing_file(tmp_path):
  path = tmp_path / 'x.json'
  path.write_text('{"images": [')
  with pytest.raises(coco.AnnotationError, match='x.json: not valid JSON'):
    coco.coco_source(path, tmp_path)
  with pytest.raises(FileNotFoundError, match='absent.json'):
    coco.coco_source(tmp_path / 'absent.json', tmp_path)


def test_keypoints_outside_image_are_kept_counted_and_not_drawn(tmp_path):
  kps = [10.0, 12.0, 2] * K
  kps[0:3] = [-500.0, -400.0, 2]  # nose far outside the image
  kps[3:6] = [64.5, 10.0, 2]  # left eye just right of a 64-wide image
  path = _write(tmp_path, [_image(1)], [_person(1, 1, kps)])
  src = coco.coco_source(path, tmp_path)
  assert src.stats['keypoints_outside_image'] == 2
  ex = src.train_example(0)
  np.testing.assert_array_equal(ex['joints'][0, 0], [-500.0, -400.0, 2])
  cfg = config_lib.with_input_size(config_lib.base_config(), 128)
  draws = transforms.AugmentDraws(u_scale=0.5, u_rot=0.5, dx=0, dy=0, flip=False)
  out = transforms.make_train_sample(ex['image'], ex['joints'], ex['mask'], draws,
                                     transforms.SampleConfig.from_config(cfg))
  assert not out['heatmaps_0'][..., 0].any()  # far-away nose neither drawn ...
  assert out['joints_0'][0, :, 1].sum() == K - 2  # ... nor tagged; the eye maps outside too
  assert out['heatmaps_0'][..., 5].max() == 1.0


@pytest.mark.filterwarnings('ignore::DeprecationWarning')  # pycocotools decode under NumPy 2
def test_zero_area_and_malformed_polygons(tmp_path):
  keyless = [0.0] * (3 * K)
  anns = [
      _person(1, 1),
      # A keypoint-less person (masked out) with a zero-area polygon: rasterizes to nothing.
      _person(2, 1, keyless, segmentation=[[5, 5, 10, 10, 15, 15]]),
      # Malformed polygons (2 and 4 numbers, odd count) are dropped; the good one is used.
      _person(3, 1, keyless, segmentation=[[1, 2], [1, 2, 3, 4], [1, 2, 3, 4, 5, 6, 7],
                                           [30, 30, 40, 30, 40, 40, 30, 40]]),
  ]
  path = _write(tmp_path, [_image(1)], anns)
  src = coco.coco_source(path, tmp_path)
  assert src.stats['dropped_polygons'] == 3
  mask = src.mask(0)
  # Expected: pycocotools' own rasterization of the one valid polygon.
  rle = mask_api.frPyObjects([[30, 30, 40, 30, 40, 40, 30, 40]], 48, 64)
  np.testing.assert_array_equal(mask, mask_api.decode(rle)[:, :, 0] == 0)
  assert (~mask).sum() == 100
  assert src.joints(0).shape == (3, K, 3)  # keypoint-less people stay as zero rows


def test_non_numeric_polygon_is_structural(tmp_path):
  anns = [_person(1, 1, [0.0] * (3 * K), segmentation=[['a', 'b', 'c', 'd', 'e', 'f']])]
  path = _write(tmp_path, [_image(1)], anns)
  with pytest.raises(coco.AnnotationError, match=r'annotations\[0\].*segmentation\[0\]'):
    coco.coco_source(path, tmp_path)


def test_images_without_people(tmp_path):
  crowd = _person(2, 2, [0.0] * (3 * K), iscrowd=1,
                  segmentation={'counts': [0, 48 * 10, 48 * 54], 'size': [48, 64]})
  path = _write(tmp_path, [_image(1), _image(2), _image(3)], [_person(1, 1), crowd])
  train = coco.coco_source(path, tmp_path, train=True)
  assert train.ids == [1, 2]  # official filter: image 3 has no annotation at all
  assert coco.coco_source(path, tmp_path, train=False).ids == [1, 2, 3]
  ex = train.train_example(1)  # only a crowd region: no people, region masked
  assert ex['joints'].shape == (0, K, 3)
  assert not ex['mask'][:, :10].any() and ex['mask'][:, 10:].all()
  cfg = config_lib.with_input_size(config_lib.base_config(), 128)
  draws = transforms.AugmentDraws(u_scale=0.3, u_rot=0.7, dx=1, dy=-2, flip=True)
  out = transforms.make_train_sample(ex['image'], ex['joints'], ex['mask'], draws,
                                     transforms.SampleConfig.from_config(cfg))
  assert not out['heatmaps_0'].any() and not out['heatmaps_1'].any()
  assert not out['joints_0'].any() and out['joints_1'].shape == (30, K, 2)
  assert 0 < out['masks_0'].mean() < 1


@pytest.mark.filterwarnings('ignore::DeprecationWarning')  # pycocotools encode under NumPy 2
def test_crowd_rle_compressed_string_counts(tmp_path):
  region = np.zeros((48, 64), np.uint8)
  region[5:20, 30:50] = 1
  rle = mask_api.encode(np.asfortranarray(region))
  crowd = _person(2, 1, [0.0] * (3 * K), iscrowd=1,
                  segmentation={'counts': rle['counts'].decode('ascii'), 'size': [48, 64]})
  path = _write(tmp_path, [_image(1)], [_person(1, 1), crowd])
  src = coco.coco_source(path, tmp_path)
  np.testing.assert_array_equal(src.mask(0), region == 0)
  assert src.joints(0).shape == (1, K, 3)  # the keypoint-less crowd is not a person
