"""Optional TFDS form of the keypoint datasets (extra `[tfds]`; TensorFlow is not needed).

`builder.PoseKeypoints` turns a manual download (official COCO / CrowdPose layout) into
ArrayRecord files; `reader.TfdsSource` reads them through `tfds.data_source` for the same
grain pipeline (`config.data.source = 'tfds'`, `config.data.tfds_data_dir`).
"""
