"""Head motion with a personal style, blinks and brow raises.

A :class:`PoseStyle` is what makes one person's head move differently from another's, and
consistently over time:

* a habitual tilt per axis (the mean Euler angles);
* an amplitude and a dominant rhythm per axis: each axis is a sum of three sinusoids around
  the person's rhythm (random phases) plus smooth noise, so it is stationary but not periodic;
* nods tied to speech: the head dips (positive x angle: the nose moves down) shortly after
  every stressed syllable, with a person-specific strength;
* translation: a habitual position and distance to the camera, a slow sway, and the
  translation that rotating about the neck (a pivot below and behind the face) implies.

:func:`sample_pose_styles` draws styles that are clearly distinguishable: a candidate is
rejected while its expected head-pose similarity (HS, :mod:`talkinghead.metrics.pose`) to an
already accepted person is too high.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from talkinghead.data.synthetic.speech import FPS
from talkinghead.face.camera import euler_to_rotation
from talkinghead.metrics.pose import bhattacharyya_gaussian, pose_gaussian_summary

MAX_ANGLE_DEG = 15.0
#: Rotation pivot (the neck) relative to the face model's origin, in model units (~1 dm).
NECK_PIVOT = np.array([0.0, -0.75, -0.55])
_RHYTHM_PARTIALS = np.array([1.0, 1.63, 0.61])  # frequency multipliers of the three sinusoids
_PARTIAL_WEIGHTS = np.array([1.0, 0.55, 0.6])
_NOISE_WEIGHT = 0.45  # std of the smooth-noise part relative to the sinusoids'


@dataclass(frozen=True)
class PoseStyle:
    """A person's head-pose style. Angles in degrees, translation in model units."""

    tilt: tuple[float, float, float] = (0.0, 0.0, 0.0)
    amplitude: tuple[float, float, float] = (2.0, 2.5, 1.0)
    rhythm: tuple[float, float, float] = (0.5, 0.4, 0.3)  # Hz
    nod: float = 1.5  # peak x-angle (deg) of the nod after a stressed syllable
    nod_delay: float = 0.08  # s after the stressed vowel onset
    position: tuple[float, float, float] = (0.0, 0.0, 0.0)  # habitual translation
    sway: tuple[float, float, float] = (0.01, 0.01, 0.02)  # translation std
    sway_hz: float = 0.3

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "PoseStyle":
        """One random style (see :func:`sample_pose_styles` for a distinguishable set)."""
        return cls(
            tilt=(float(rng.uniform(-6, 6)), float(rng.uniform(-8, 8)), float(rng.uniform(-5, 5))),
            amplitude=(float(rng.uniform(0.6, 4.0)), float(rng.uniform(0.8, 5.0)), float(rng.uniform(0.4, 2.5))),
            rhythm=tuple(float(f) for f in rng.uniform(0.3, 1.1, 3)),
            nod=float(rng.uniform(0.0, 3.0)),
            nod_delay=float(rng.uniform(0.04, 0.15)),
            position=(float(rng.uniform(-0.06, 0.06)), float(rng.uniform(-0.05, 0.05)), float(rng.uniform(-0.5, 0.5))),
            sway=(float(rng.uniform(0.004, 0.02)), float(rng.uniform(0.004, 0.015)), float(rng.uniform(0.01, 0.05))),
            sway_hz=float(rng.uniform(0.15, 0.5)),
        )


def _smooth_noise(rng: np.random.Generator, n: int, width_frames: float) -> np.ndarray:
    """Gaussian noise ``[n]`` smoothed with a Hann kernel ``width_frames`` wide, scaled to unit
    std analytically (so short sequences have the same statistics as long ones)."""
    k = max(int(width_frames) | 1, 3)
    kernel = np.hanning(k + 2)[1:-1]
    kernel /= np.sqrt((kernel**2).sum())  # white noise through this kernel has unit std
    return np.convolve(rng.normal(size=n + k - 1), kernel, mode="valid")


def _oscillation(rng: np.random.Generator, n: int, rhythm: float, fps: int) -> np.ndarray:
    """Zero-mean motion ``[n]`` of about unit std around frequency ``rhythm`` (Hz)."""
    t = np.arange(n) / fps
    freqs = rhythm * _RHYTHM_PARTIALS * rng.uniform(0.9, 1.1, 3)
    phases = rng.uniform(0, 2 * np.pi, 3)
    waves = (_PARTIAL_WEIGHTS[:, None] * np.sin(2 * np.pi * freqs[:, None] * t + phases[:, None])).sum(0)
    waves /= np.sqrt((_PARTIAL_WEIGHTS**2).sum() / 2.0)  # analytic unit std
    noise = _smooth_noise(rng, n, fps / (2.0 * rhythm))
    return (waves + _NOISE_WEIGHT * noise) / np.sqrt(1.0 + _NOISE_WEIGHT**2)


def nod_curve(stress_times: np.ndarray, num_frames: int, delay: float, fps: int = FPS, peak_time: float = 0.15) -> np.ndarray:
    """Sum of nod bumps ``[num_frames]`` (peak 1 each): ``tau/tp * exp(1 - tau/tp)`` for
    ``tau = t - stress - delay > 0``."""
    tau = np.arange(num_frames)[:, None] / fps - np.asarray(stress_times)[None, :] - delay  # [N, S]
    bump = np.where(tau > 0, tau / peak_time * np.exp(1.0 - np.maximum(tau, 0) / peak_time), 0.0)
    return bump.sum(1) if bump.shape[1] else np.zeros(num_frames)


def head_angles(style: PoseStyle, num_frames: int, stress_times: np.ndarray, rng: np.random.Generator,
                fps: int = FPS) -> np.ndarray:
    """Per-frame Euler angles ``[N, 3]`` in radians (tilt + rhythmic motion + nods)."""
    deg = np.stack([
        style.tilt[a] + style.amplitude[a] * _oscillation(rng, num_frames, style.rhythm[a], fps) for a in range(3)
    ], -1)  # [N, 3]
    deg[:, 0] += style.nod * nod_curve(stress_times, num_frames, style.nod_delay, fps)
    return np.radians(MAX_ANGLE_DEG * np.tanh(deg / MAX_ANGLE_DEG))  # soft limit to +-15 degrees


def head_motion(style: PoseStyle, num_frames: int, stress_times: np.ndarray, rng: np.random.Generator,
                fps: int = FPS) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame head pose -> (Euler angles ``[N, 3]`` in radians, translation ``[N, 3]``)."""
    angles = head_angles(style, num_frames, stress_times, rng, fps)
    sway = np.stack([
        style.sway[a] * _oscillation(rng, num_frames, style.sway_hz * (1.0 + 0.3 * a), fps) for a in range(3)
    ], -1)
    # rotating about the neck pivot p: (v - p) R + p = v R + (p - p R)
    rot = euler_to_rotation(torch.from_numpy(angles)).numpy()  # [N, 3, 3]
    pivot_shift = NECK_PIVOT - NECK_PIVOT @ rot  # [N, 3]
    translation = np.asarray(style.position)[None] + sway + pivot_shift
    return angles, translation


def expected_summary(style: PoseStyle, num_frames: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The style's long-run HS summary (mean, std ``[6]``, see
    :func:`talkinghead.metrics.pose.pose_gaussian_summary`), from a simulated sequence with a
    stressed syllable every 0.7 s."""
    stress = np.arange(0.3, num_frames / FPS, 0.7)
    return pose_gaussian_summary(head_angles(style, num_frames, stress, np.random.default_rng(seed)))


def sample_pose_styles(count: int, rng: np.random.Generator, max_similarity: float = 0.8,
                       tries: int = 300) -> list[PoseStyle]:
    """``count`` styles, each with expected HS <= ``max_similarity`` to every earlier one (the
    least similar of ``tries`` candidates when none qualifies). The first ``k`` styles do not
    depend on ``count``."""
    styles: list[PoseStyle] = []
    means, stds = [], []
    for _ in range(count):
        best, best_sim, best_summary = None, np.inf, None
        for _ in range(tries):
            candidate = PoseStyle.sample(rng)
            m, s = expected_summary(candidate)
            sim = 0.0 if not styles else float(bhattacharyya_gaussian(m, s, np.stack(means), np.stack(stds)).mean(-1).max())
            if sim < best_sim:
                best, best_sim, best_summary = candidate, sim, (m, s)
            if sim <= max_similarity:
                break
        styles.append(best)
        means.append(best_summary[0])
        stds.append(best_summary[1])
    return styles


# ------------------------------------------------------------------------------ face cues
def blinks(num_frames: int, rate_hz: float, rng: np.random.Generator, fps: int = FPS) -> np.ndarray:
    """Eyelid closure ``[N]`` in [0, 1]: blinks at random times (about ``rate_hz`` per second,
    at least 0.8 s apart): 70 ms closing, 40 ms closed, 130 ms opening."""
    duration = num_frames / fps
    gaps = 0.8 + rng.exponential(max(1.0 / rate_hz - 0.8, 0.2), size=int(duration * rate_hz * 2 + 4))
    starts = rng.uniform(0.0, 2.0) + np.concatenate([[0.0], np.cumsum(gaps)])
    starts = starts[starts < duration]
    tau = np.arange(num_frames)[:, None] / fps - starts[None, :]  # [N, K]
    closing = np.clip(tau / 0.07, 0.0, 1.0)
    opening = np.clip(1.0 - (tau - 0.11) / 0.13, 0.0, 1.0)
    lid = np.where(tau < 0.0, 0.0, np.minimum(closing, opening))
    return (np.sin(0.5 * np.pi * lid) ** 2).max(1) if lid.shape[1] else np.zeros(num_frames)


def brow_raises(stress_times: np.ndarray, num_frames: int, coupling: float, rng: np.random.Generator,
                fps: int = FPS) -> np.ndarray:
    """Brow raise ``[N]``: bumps (0.35 s) on about half of the stressed syllables, scaled by
    the person's ``coupling``, plus a slow drift."""
    chosen = np.asarray(stress_times)[rng.random(len(stress_times)) < 0.5]
    tau = np.arange(num_frames)[:, None] / fps - chosen[None, :] + 0.05
    bumps = np.exp(-0.5 * (tau / 0.15) ** 2).sum(1) if len(chosen) else np.zeros(num_frames)
    drift = 0.08 * _smooth_noise(rng, num_frames, 3 * fps)
    return np.clip(coupling * np.minimum(bumps, 1.2) + drift, -0.2, 1.2)
