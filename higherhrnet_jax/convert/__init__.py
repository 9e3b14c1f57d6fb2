"""Official PyTorch checkpoints <-> Flax variables, without PyTorch."""

from higherhrnet_jax.convert.official import (
    CheckpointMismatchError,
    ImportReport,
    abstract_variables,
    is_pose_checkpoint,
    key_table,
    load_imagenet_backbone,
    load_official,
    read_state_dict,
    save_official,
    to_official,
)
from higherhrnet_jax.convert.pth import CheckpointFormatError, UnsafeCheckpointError, load_pth

__all__ = [
    'CheckpointFormatError', 'CheckpointMismatchError', 'ImportReport', 'UnsafeCheckpointError',
    'abstract_variables', 'is_pose_checkpoint', 'key_table', 'load_imagenet_backbone',
    'load_official', 'load_pth', 'read_state_dict', 'save_official', 'to_official',
]
