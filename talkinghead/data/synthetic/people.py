"""Synthetic persons: everything that stays fixed for one person of the world.

A :class:`Person` bundles the face-model coefficients that never change for them (identity,
texture, base lighting), a :class:`~talkinghead.data.synthetic.speech.Voice` and an
:class:`~talkinghead.data.synthetic.mouth.Articulation`, a
:class:`~talkinghead.data.synthetic.motion.PoseStyle`, facial habits (smile, blink rate, brow
raises on stress) and the :class:`Appearance` of what a 3DMM render lacks (hair, neck, shirt,
skin detail, a light with a specular component, the background, camera noise).

Randomness: :func:`sample_people` derives everything from one integer seed through
``np.random.SeedSequence(seed).spawn``: child 0 draws the (jointly sampled, mutually
distinguishable) pose styles, child ``i + 1`` person ``i``. Person ``i`` is the same whatever
the number of persons asked for, and each person's later streams (speech, motion, frames)
are spawned from their own seed sequence, so changing the frame count never changes the
identity.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from talkinghead.data.synthetic.motion import PoseStyle, sample_pose_styles
from talkinghead.data.synthetic.mouth import Articulation
from talkinghead.data.synthetic.speech import Voice
from talkinghead.face.coeffs import ID_DIM, SH_DIM, TEX_DIM

#: Scale of the identity / texture coefficient draws (one unit = one model standard deviation);
#: the draws are clipped at 2 (identity) / 1.8 (texture) of these scales (no extreme faces).
IDENTITY_SCALE = 0.8
TEXTURE_SCALE = 0.7

_HAIR_COLOURS = np.array([
    [0.06, 0.05, 0.045],  # black
    [0.22, 0.14, 0.08],  # dark brown
    [0.42, 0.28, 0.16],  # brown
    [0.72, 0.58, 0.36],  # blond
    [0.55, 0.25, 0.12],  # auburn
    [0.62, 0.6, 0.58],  # grey
])


@dataclass(frozen=True)
class Appearance:
    """What the "real" frames show beyond the 3DMM (colours RGB in [0, 1]).

    Hair: a head-shaped region behind the face plus a hairline on the forehead (``hairline``
    in face-model y units; ~0.95 and above is a bald forehead), ``hair_width``/``hair_height``
    scale the head silhouette, ``hair_length`` how far the hair reaches down (in head radii).
    Light: a key light direction (world, toward the light), its strength and the specular
    strength/shininess of the skin. Camera: noise std (in 8-bit levels), white balance, blur.
    """

    hair_colour: tuple[float, float, float]
    hairline: float
    hair_width: float
    hair_height: float
    hair_length: float
    hair_wave: float
    hair_seed: int
    neck_width: float
    shirt_colour: tuple[float, float, float]
    skin_detail: float
    freckles: float
    detail_seed: int
    key_light: tuple[float, float, float]
    key_strength: float
    specular: float
    shininess: float
    background_seed: int
    noise_std: float
    white_balance: tuple[float, float, float]
    blur: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "Appearance":
        hair = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] * rng.uniform(0.85, 1.15, 3)
        light = np.array([rng.uniform(-0.8, 0.8), rng.uniform(0.1, 0.8), rng.uniform(0.6, 1.0)])
        light /= np.linalg.norm(light)
        shirt = rng.uniform(0.05, 0.85, 3)
        return cls(
            hair_colour=tuple(float(c) for c in np.clip(hair, 0, 1)),
            hairline=float(rng.uniform(0.5, 0.98)),
            hair_width=float(rng.uniform(0.95, 1.15)),
            hair_height=float(rng.uniform(1.0, 1.2)),
            hair_length=float(rng.uniform(-0.3, 1.0)),
            hair_wave=float(rng.uniform(0.0, 1.0)),
            hair_seed=int(rng.integers(2**31)),
            neck_width=float(rng.uniform(0.5, 0.7)),
            shirt_colour=tuple(float(c) for c in shirt),
            skin_detail=float(rng.uniform(0.015, 0.05)),
            freckles=float(rng.uniform(0.0, 1.0) ** 2),
            detail_seed=int(rng.integers(2**31)),
            key_light=tuple(float(c) for c in light),
            key_strength=float(rng.uniform(0.15, 0.35)),
            specular=float(rng.uniform(0.03, 0.12)),
            shininess=float(rng.uniform(15.0, 50.0)),
            background_seed=int(rng.integers(2**31)),
            noise_std=float(rng.uniform(1.0, 3.5)),
            white_balance=tuple(float(c) for c in rng.uniform(0.93, 1.07, 3)),
            blur=float(rng.uniform(0.0, 0.6)),
        )


@dataclass
class Person:
    """One synthetic person (see the module docstring). Coefficient arrays are float32."""

    name: str
    index: int
    split: str  # "train" | "heldout"
    identity: np.ndarray  # [80]
    texture: np.ndarray  # [80]
    lighting: np.ndarray  # [27] base SH lighting (channel-major, SH_DC_INIT added at shading)
    voice: Voice
    articulation: Articulation
    pose_style: PoseStyle
    smile: float  # habitual smile (expression unit value)
    blink_rate: float  # blinks per second
    brow_coupling: float  # brow raise on stressed syllables
    expression_bias: np.ndarray  # [57] habitual offsets of expression units 7..63
    appearance: Appearance
    seed: np.random.SeedSequence  # the person's own stream; spawn for speech/motion/frames

    def streams(self) -> dict[str, np.random.Generator]:
        """Independent generators for the parts of a clip (the same on every call)."""
        names = ("speech", "motion", "expression", "lighting", "frames")
        children = np.random.SeedSequence(self.seed.entropy, spawn_key=self.seed.spawn_key).spawn(len(names) + 1)[1:]
        return {name: np.random.default_rng(child) for name, child in zip(names, children)}

    def describe(self) -> dict:
        """JSON-serialisable summary for ``meta.extra`` (the generator's settings)."""
        return {
            "index": self.index,
            "voice": asdict(self.voice),
            "articulation": asdict(self.articulation),
            "pose_style": asdict(self.pose_style),
            "smile": self.smile,
            "blink_rate": self.blink_rate,
            "brow_coupling": self.brow_coupling,
            "appearance": asdict(self.appearance),
        }


def _sample_lighting(rng: np.random.Generator) -> np.ndarray:
    """Base SH lighting ``[27]``: brightness and a colour tint on band 0, mostly-white
    directional bands 1-3, weak bands 4-8."""
    gamma = np.zeros((3, 9))
    gamma[:, 0] = rng.normal(0.0, 0.06) + rng.normal(0.0, 0.012, 3)
    gamma[:, 1:4] = rng.normal(0.0, 0.12, 3)[None] + rng.normal(0.0, 0.02, (3, 3))
    gamma[:, 4:] = rng.normal(0.0, 0.04, 5)[None] + rng.normal(0.0, 0.01, (3, 5))
    return gamma.reshape(SH_DIM).astype(np.float32)


def make_person(index: int, seed: np.random.SeedSequence, pose_style: PoseStyle, split: str = "train") -> Person:
    """Person ``index`` drawn from its seed sequence, with a given pose style."""
    rng = np.random.default_rng(np.random.SeedSequence(seed.entropy, spawn_key=seed.spawn_key).spawn(1)[0])
    return Person(
        name=f"person_{index:03d}",
        index=index,
        split=split,
        identity=(IDENTITY_SCALE * np.clip(rng.normal(0.0, 1.0, ID_DIM), -2.0, 2.0)).astype(np.float32),
        texture=(TEXTURE_SCALE * np.clip(rng.normal(0.0, 1.0, TEX_DIM), -1.8, 1.8)).astype(np.float32),
        lighting=_sample_lighting(rng),
        voice=Voice.sample(rng),
        articulation=Articulation.sample(rng),
        pose_style=pose_style,
        smile=float(rng.uniform(0.0, 0.45) ** 1.5),
        blink_rate=float(rng.uniform(0.15, 0.5)),
        brow_coupling=float(rng.uniform(0.0, 0.8)),
        expression_bias=rng.normal(0.0, 0.3, 57).astype(np.float32),
        appearance=Appearance.sample(rng),
        seed=seed,
    )


def sample_people(count: int, seed: int = 0, heldout: int = 0) -> list[Person]:
    """``count`` persons from ``seed``; the last ``heldout`` of them get split "heldout"."""
    if count < 1:
        raise ValueError(f"need at least one person, got {count}")
    root = np.random.SeedSequence(int(seed))
    children = root.spawn(count + 1)
    styles = sample_pose_styles(count, np.random.default_rng(children[0]))
    return [
        make_person(i, children[i + 1], styles[i], "heldout" if i >= count - heldout else "train")
        for i in range(count)
    ]
