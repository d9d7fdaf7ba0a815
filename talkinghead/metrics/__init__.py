"""Evaluation metrics: head-pose similarity (HS, our definition), landmark distance (LMD),
lip-sync correlation, PSNR and SSIM."""

from talkinghead.metrics.image import psnr, ssim
from talkinghead.metrics.landmarks import (
    landmark_distance,
    landmarks_from_coeffs,
    mouth_landmark_distance,
    stage1_mouth_lmd,
)
from talkinghead.metrics.lipsync import LipSync, lip_sync_score, mouth_opening
from talkinghead.metrics.pose import head_pose_similarity, head_pose_similarity_matrix
