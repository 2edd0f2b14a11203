"""Calibration audio as the encoder sees it: log-mels, how many of each window's frames hold audio, per-frame
weights that split a clip's loss between audio and padding.

Whisper hops 160 samples per mel frame and its second conv strides 2, so one encoder frame is 320 samples (20 ms);
a window shorter than 30 s is padded, and the padding frames are ~90 % of a typical calibration set's. The decoder
cross-attends to them, so every loss and statistic here covers them, weighted apart from the audio.
"""

from __future__ import annotations

import math

import torch

DEFAULT_PADDING_WEIGHT = 0.5  # padding frames' share of a clip's statistics and losses (None: every frame alike)


def real_frame_count(num_samples: int, samples_per_frame: int = 320, max_frames: int = 1500) -> int:
    """Encoder frames of a window that hold real audio; the rest of the 30 s window is padding."""
    return min(max_frames, math.ceil(num_samples / samples_per_frame))


def features_of(feature_extractor, audios, max_frames: int = 1500):
    """(log-mels [N, n_mels, 3000] float32, real-audio encoder frames [N]) of 16 kHz windows of at most 30 s."""
    feats = feature_extractor(list(audios), sampling_rate=feature_extractor.sampling_rate, return_tensors="pt").input_features
    real = torch.tensor([real_frame_count(len(a), feature_extractor.hop_length * 2, max_frames) for a in audios])
    return feats.float(), real


def frame_mask(real: torch.Tensor, total: int) -> torch.Tensor:
    """[N] real-frame counts -> [N, T] bool, True on real-audio frames."""
    return torch.arange(total, device=real.device)[None, :] < real[:, None]


def frame_weights(real: torch.Tensor, total: int, pad_weight: float | None = DEFAULT_PADDING_WEIGHT) -> torch.Tensor:
    """[N, T] per-frame loss weights, each clip summing to 1: real frames share 1 - pad_weight, padding frames
    pad_weight (None: every frame equal)."""
    mask = frame_mask(real, total).float()
    if pad_weight is None:
        return torch.full_like(mask, 1.0 / total)
    pad = 1 - mask
    w = (1 - pad_weight) * mask / mask.sum(1, keepdim=True).clamp(min=1) + pad_weight * pad / pad.sum(1, keepdim=True).clamp(min=1)
    return w / w.sum(1, keepdim=True)  # clips without padding: all weight on real frames
