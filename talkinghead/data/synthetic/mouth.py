"""Phonemes -> mouth shape over time, with co-articulation and the mouth leading the sound.

Four articulatory units drive the mouth (they are fixed expression components of the
procedural face model, see :data:`talkinghead.face.procedural.EXPRESSION_UNITS`):

``jaw_open``    open vowels open the jaw (a > e, o > i, u), consonants close it partly;
``lip_round``   rounded vowels (o, u) protrude and round the lips;
``lip_spread``  front vowels (i, e) spread them; ``s`` spreads a little;
``lip_close``   bilabials (p, b, m) press the lips shut, labiodentals (f, v) half; rest
                (silence) keeps them lightly closed.

Co-articulation follows the dominance model of Cohen & Massaro (1993): every segment pulls each
unit toward its target with a dominance that decays exponentially with the distance (in time)
to the segment's core; the unit's value is the dominance-weighted mean of the targets. A
consonant with weak dominance on a unit (say /t/ on lip rounding) takes that unit from its
neighbours (anticipatory rounding in "tu"), while a bilabial's very strong lip-closure
dominance closes the lips even between two open vowels, loud as the /m/ may be. The
trajectory is then evaluated ``lead`` seconds ahead of the sound (the mouth moves 40-80 ms
before the acoustic event) at the video frame times.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from talkinghead.data.synthetic.speech import FPS, PHONEMES, VOWELS, Timeline

#: The mouth units, in the column order of :func:`mouth_trajectory`'s output.
MOUTH_UNITS: tuple[str, ...] = ("jaw_open", "lip_round", "lip_spread", "lip_close")

# symbol -> (targets, dominances) for (jaw_open, lip_round, lip_spread, lip_close).
_ARTICULATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "sil": ((0.0, 0.0, 0.0, 0.35), (1.0, 1.0, 1.0, 1.0)),
    "a": ((1.0, 0.0, 0.15, 0.0), (1.0, 0.6, 0.6, 1.0)),
    "e": ((0.55, 0.0, 0.6, 0.0), (1.0, 0.8, 1.0, 1.0)),
    "i": ((0.2, 0.0, 1.0, 0.0), (1.0, 1.0, 1.0, 1.0)),
    "o": ((0.55, 0.75, 0.0, 0.0), (1.0, 1.0, 1.0, 1.0)),
    "u": ((0.2, 1.0, 0.0, 0.0), (1.0, 1.0, 1.0, 1.0)),
    "@": ((0.45, 0.1, 0.1, 0.0), (0.6, 0.3, 0.3, 0.6)),
    "p": ((0.12, 0.0, 0.0, 1.0), (0.8, 0.1, 0.2, 12.0)),
    "b": ((0.12, 0.0, 0.0, 1.0), (0.8, 0.1, 0.2, 12.0)),
    "m": ((0.12, 0.0, 0.0, 1.0), (0.8, 0.1, 0.2, 12.0)),
    "f": ((0.15, 0.0, 0.1, 0.55), (0.8, 0.2, 0.3, 5.0)),
    "v": ((0.15, 0.0, 0.1, 0.55), (0.8, 0.2, 0.3, 5.0)),
    "t": ((0.2, 0.0, 0.1, 0.0), (0.6, 0.05, 0.1, 0.5)),
    "d": ((0.2, 0.0, 0.1, 0.0), (0.6, 0.05, 0.1, 0.5)),
    "s": ((0.1, 0.0, 0.35, 0.0), (0.9, 0.1, 0.4, 0.5)),
    "n": ((0.2, 0.0, 0.05, 0.0), (0.6, 0.05, 0.1, 0.5)),
    "l": ((0.3, 0.0, 0.05, 0.0), (0.5, 0.05, 0.1, 0.5)),
    "k": ((0.3, 0.0, 0.0, 0.0), (0.5, 0.05, 0.1, 0.5)),
    "g": ((0.3, 0.0, 0.0, 0.0), (0.5, 0.05, 0.1, 0.5)),
}
TARGETS = np.array([_ARTICULATION[p.symbol][0] for p in PHONEMES])  # [P, 4]
DOMINANCE = np.array([_ARTICULATION[p.symbol][1] for p in PHONEMES])  # [P, 4]
#: Dominance decay time constant (s) per unit: the lips move faster than the jaw.
_TAU = np.array([0.06, 0.07, 0.06, 0.02])


@dataclass(frozen=True)
class Articulation:
    """A speaker's articulation: per-unit gain (how wide they open / round / spread / close)
    and how far (s) the mouth leads the sound."""

    gain: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    lead: float = 0.06

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "Articulation":
        g = rng.uniform(0.85, 1.15, 3)
        return cls(gain=(float(g[0]), float(g[1]), float(g[2]), 1.0), lead=float(rng.uniform(0.04, 0.08)))

    def with_gains_from(self, ranges: dict[str, tuple[float, float]], rng: np.random.Generator) -> "Articulation":
        """This articulation (same lead) with each unit's gain drawn uniformly from
        ``ranges[unit] = (low, high)`` (units of :data:`MOUTH_UNITS`; a unit not named keeps its
        gain). Real speakers differ far more than the rendered world's persons (0.85-1.15): in
        the fitted coefficients of two real videos the lip units move 2-3 times less than the
        world's (README, Stage 1 on real speech)."""
        unknown = sorted(set(ranges) - set(MOUTH_UNITS))
        if unknown:
            raise ValueError(f"unknown mouth unit {unknown[0]!r}; units: {', '.join(MOUTH_UNITS)}")
        gain = list(self.gain)
        for k, unit in enumerate(MOUTH_UNITS):  # a fixed draw order: the gains are a function of the seed
            if unit in ranges:
                low, high = (float(v) for v in ranges[unit])
                if not 0.0 <= low <= high:
                    raise ValueError(f"gain range of {unit} must be 0 <= low <= high, got {ranges[unit]}")
                gain[k] = float(rng.uniform(low, high))
        return Articulation(gain=tuple(gain), lead=self.lead)


def articulatory_trajectory(timeline: Timeline, times: np.ndarray, stress_boost: float = 0.15) -> np.ndarray:
    """Dominance-blended mouth units at ``times [T]`` (seconds) -> ``[T, 4]`` in [0, 1]."""
    start, end = timeline.start[None, :], timeline.end[None, :]  # [1, P]
    dur = end - start
    core_lo, core_hi = start + 0.3 * dur, end - 0.3 * dur  # the segment's steady part
    t = times[:, None]  # [T, 1]
    dist = np.maximum(np.maximum(core_lo - t, t - core_hi), 0.0)  # [T, P]
    targets = TARGETS[timeline.ids].copy()  # [P, 4]
    stressed_vowel = timeline.stress & np.isin(timeline.ids, VOWELS)
    targets[stressed_vowel, 0] *= 1.0 + stress_boost  # stressed vowels are hyper-articulated
    dominance = DOMINANCE[timeline.ids][None] * np.exp(-dist[..., None] / _TAU)  # [T, P, 4]
    dominance = dominance + 1e-12
    return np.einsum("tpu,pu->tu", dominance, targets) / dominance.sum(1)


def mouth_trajectory(timeline: Timeline, num_frames: int, articulation: Articulation = Articulation(),
                     fps: int = FPS) -> np.ndarray:
    """Mouth units per video frame ``[num_frames, 4]`` (columns :data:`MOUTH_UNITS`): frame
    ``t`` shows the articulation of the sound at ``t / fps + lead`` seconds. Long timelines are
    evaluated in chunks to bound memory."""
    times = np.arange(num_frames) / fps + articulation.lead
    out = np.empty((num_frames, len(MOUTH_UNITS)))
    chunk = 256
    for lo in range(0, num_frames, chunk):
        t = times[lo:lo + chunk]
        # only segments near this chunk matter (dominance decays within ~0.5 s)
        near = (timeline.end > t[0] - 1.0) & (timeline.start < t[-1] + 1.0)
        near[timeline.segment_at(t[[0, -1]])] = True  # never empty, even past the timeline's end
        sub = Timeline(timeline.ids[near], timeline.start[near], timeline.end[near],
                       timeline.stress[near], timeline.gain[near])
        out[lo:lo + chunk] = articulatory_trajectory(sub, t)
    return out * np.asarray(articulation.gain)[None, :]
