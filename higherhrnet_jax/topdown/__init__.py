"""HRNet top-down pose estimation (Sun et al., CVPR 2019): the parts specific to it.

A person box is cropped and warped to a fixed input (256x192, 384x288, ...); the shared
HRNet backbone plus a 1x1 head (`models/pose_hrnet.py`) gives one heatmap per joint at 1/4
resolution, and each joint is that heatmap's maximum mapped back to the image. What it
shares with HigherHRNet (backbone, keypoint specs, COCO sources and evaluation, the sharded
train step, checkpoints, the loop) lives in the shared packages; what lives here is only
what top-down does differently: box-centred samples and targets, the loss, decoding, the
person-box test path, and the MPII benchmark.
"""
