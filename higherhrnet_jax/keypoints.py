"""Keypoint dataset specs as data: joints, flip pairs, OKS sigmas, grouping order.

A custom keypoint set is a new :class:`KeypointSpec` (or the same fields in a config),
not new code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import ml_collections
import numpy as np


@dataclasses.dataclass(frozen=True)
class KeypointSpec:
  """Everything about a keypoint set that the pipeline needs.

  Attributes:
    name: dataset name.
    joint_names: one name per joint, in annotation order.
    flip_index: `flip_index[k]` is the joint that joint `k` becomes under a horizontal flip.
    sigmas: per-joint OKS sigmas (as used by the evaluator).
    joint_order: order in which grouping visits the joints (official `Params.joint_order`).
    skeleton: pairs of joint indices to draw.
  """

  name: str
  joint_names: tuple[str, ...]
  flip_index: tuple[int, ...]
  sigmas: tuple[float, ...]
  joint_order: tuple[int, ...]
  skeleton: tuple[tuple[int, int], ...]

  def __post_init__(self):
    k = len(self.joint_names)
    for field in ('flip_index', 'sigmas', 'joint_order'):
      if len(getattr(self, field)) != k:
        raise ValueError(f'keypoint spec {self.name!r}: {field} has {len(getattr(self, field))} '
                         f'entries for {k} joints')
    if sorted(self.flip_index) != list(range(k)):
      raise ValueError(f'keypoint spec {self.name!r}: flip_index is not a permutation')
    if any(self.flip_index[j] != i for i, j in enumerate(self.flip_index)):
      raise ValueError(f'keypoint spec {self.name!r}: flip_index is not an involution')
    if sorted(self.joint_order) != list(range(k)):
      raise ValueError(f'keypoint spec {self.name!r}: joint_order is not a permutation')
    for a, b in self.skeleton:
      if not (0 <= a < k and 0 <= b < k):
        raise ValueError(f'keypoint spec {self.name!r}: skeleton edge ({a}, {b}) out of range')

  @property
  def num_joints(self) -> int:
    return len(self.joint_names)

  @property
  def flip_index_array(self) -> np.ndarray:
    return np.asarray(self.flip_index, np.int32)

  def to_config(self) -> ml_collections.ConfigDict:
    d = dataclasses.asdict(self)
    d['skeleton'] = tuple(tuple(e) for e in self.skeleton)
    return ml_collections.ConfigDict(d)


def spec_from_config(c: Mapping | ml_collections.ConfigDict) -> KeypointSpec:
  """Builds a :class:`KeypointSpec` from its config form (validating it)."""
  get = c.get if hasattr(c, 'get') else c.__getitem__
  return KeypointSpec(
      name=str(get('name')),
      joint_names=tuple(get('joint_names')),
      flip_index=tuple(int(i) for i in get('flip_index')),
      sigmas=tuple(float(s) for s in get('sigmas')),
      joint_order=tuple(int(i) for i in get('joint_order')),
      skeleton=tuple(tuple(int(i) for i in e) for e in get('skeleton')),
  )


def _pairs(names: Sequence[str], edges: Sequence[tuple[str, str]]) -> tuple[tuple[int, int], ...]:
  return tuple((names.index(a), names.index(b)) for a, b in edges)


_COCO_NAMES = ('nose', 'left_eye', 'right_eye', 'left_ear', 'right_ear', 'left_shoulder',
               'right_shoulder', 'left_elbow', 'right_elbow', 'left_wrist', 'right_wrist',
               'left_hip', 'right_hip', 'left_knee', 'right_knee', 'left_ankle', 'right_ankle')

COCO = KeypointSpec(
    name='coco',
    joint_names=_COCO_NAMES,
    flip_index=(0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15),
    sigmas=tuple(s / 10.0 for s in (.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62,
                                    1.07, 1.07, .87, .87, .89, .89)),
    joint_order=(0, 1, 2, 3, 4, 5, 6, 11, 12, 7, 8, 9, 10, 13, 14, 15, 16),
    skeleton=_pairs(_COCO_NAMES, (
        ('left_ankle', 'left_knee'), ('left_knee', 'left_hip'), ('right_ankle', 'right_knee'),
        ('right_knee', 'right_hip'), ('left_hip', 'right_hip'), ('left_shoulder', 'left_hip'),
        ('right_shoulder', 'right_hip'), ('left_shoulder', 'right_shoulder'),
        ('left_shoulder', 'left_elbow'), ('right_shoulder', 'right_elbow'),
        ('left_elbow', 'left_wrist'), ('right_elbow', 'right_wrist'), ('left_eye', 'right_eye'),
        ('nose', 'left_eye'), ('nose', 'right_eye'), ('left_eye', 'left_ear'),
        ('right_eye', 'right_ear'), ('left_ear', 'left_shoulder'),
        ('right_ear', 'right_shoulder'))),
)

_CROWDPOSE_NAMES = ('left_shoulder', 'right_shoulder', 'left_elbow', 'right_elbow', 'left_wrist',
                    'right_wrist', 'left_hip', 'right_hip', 'left_knee', 'right_knee',
                    'left_ankle', 'right_ankle', 'head', 'neck')

CROWDPOSE = KeypointSpec(
    name='crowdpose',
    joint_names=_CROWDPOSE_NAMES,
    flip_index=(1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 12, 13),
    sigmas=tuple(s / 10.0 for s in (.79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89,
                                    .79, .79)),
    joint_order=(12, 13, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11),
    skeleton=_pairs(_CROWDPOSE_NAMES, (
        ('head', 'neck'), ('neck', 'left_shoulder'), ('neck', 'right_shoulder'),
        ('left_shoulder', 'left_elbow'), ('left_elbow', 'left_wrist'),
        ('right_shoulder', 'right_elbow'), ('right_elbow', 'right_wrist'),
        ('left_shoulder', 'left_hip'), ('right_shoulder', 'right_hip'), ('left_hip', 'right_hip'),
        ('left_hip', 'left_knee'), ('left_knee', 'left_ankle'), ('right_hip', 'right_knee'),
        ('right_knee', 'right_ankle'))),
)

_MPII_NAMES = ('right_ankle', 'right_knee', 'right_hip', 'left_hip', 'left_knee', 'left_ankle',
               'pelvis', 'thorax', 'upper_neck', 'head_top', 'right_wrist', 'right_elbow',
               'right_shoulder', 'left_shoulder', 'left_elbow', 'left_wrist')

# MPII is scored with PCKh, which has no per-joint sigmas; these OKS sigmas (mmpose's, adapted
# from COCO) only serve OKS-based tools such as NMS.
MPII = KeypointSpec(
    name='mpii',
    joint_names=_MPII_NAMES,
    flip_index=(5, 4, 3, 2, 1, 0, 6, 7, 8, 9, 15, 14, 13, 12, 11, 10),
    sigmas=(.089, .083, .107, .107, .083, .089, .026, .026, .026, .026, .062, .072, .179, .179,
            .072, .062),
    joint_order=tuple(range(16)),
    skeleton=_pairs(_MPII_NAMES, (
        ('right_ankle', 'right_knee'), ('right_knee', 'right_hip'), ('right_hip', 'pelvis'),
        ('pelvis', 'left_hip'), ('left_hip', 'left_knee'), ('left_knee', 'left_ankle'),
        ('pelvis', 'thorax'), ('thorax', 'upper_neck'), ('upper_neck', 'head_top'),
        ('upper_neck', 'right_shoulder'), ('right_shoulder', 'right_elbow'),
        ('right_elbow', 'right_wrist'), ('upper_neck', 'left_shoulder'),
        ('left_shoulder', 'left_elbow'), ('left_elbow', 'left_wrist'))),
)

SPECS = {'coco': COCO, 'crowdpose': CROWDPOSE, 'mpii': MPII}
