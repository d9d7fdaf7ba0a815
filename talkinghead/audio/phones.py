"""Phone posteriors from an acoustic model trained on real speech: Stage 1's speaker-independent input.

Why
    A Stage-1 network trained on the synthetic world's voices learns those voices' MFCC, not
    speech: on real voices its lips barely followed (issue 13; README "Stage 1 on real speech").
    The ``pocketsphinx`` wheel (5.x, PyPI) ships CMU Sphinx's generic US-English acoustic model,
    trained on many hours of real speakers, and nothing has to be downloaded. Its Gaussians
    turn every 10 ms of audio into a probability per phone; those phone posteriors are much the
    same for the synthetic voices and for a real speaker, so a network trained on synthetic
    speech carries to real speech (README: 31.mp4's held-out block 0.32 -> 0.56).

What is computed
    The model (``<pocketsphinx>/model/en-us/en-us``) is phonetically tied (PTM): each of its 42
    context-independent phones (``PHONES``: 39 ARPAbet phones, silence, noise, spoken noise) has
    a codebook of 128 diagonal Gaussians in three streams (13 cepstra, their deltas, their
    double deltas). Per 10 ms row this module computes every phone's log-likelihood as the
    log of the mean density of its codebook's Gaussians (the three streams' log densities
    summed), then the posterior over the 42 phones with a flat prior, and returns
    ``log(posterior + 1e-4)``, float32 ``[rows, 42]``. The senones' mixture weights (the
    ``sendump`` file) and the decoder's search are not used: the result is a soft
    posteriorgram, not a recognised phone string. (Session 23 tried the decoder's 1-best phone
    string; it was too noisy to help, README.)

    The front end is Sphinx's, with ``feat.params`` of the model (25 mel filters 130-6800 Hz,
    orthonormal DCT-II, lifter 22, ``1s_c_d_dd`` deltas, utterance-mean cepstral normalisation):
    pre-emphasis 0.97, 410-sample (25.625 ms) Hamming frames every 160 samples, ``|rfft(., 512)|^2``,
    triangular mel filters of unit area (Sphinx's mel scale ``2595 log10(1 + f/700)``), natural
    log (energies floored 120 dB below the utterance's largest), 13 cepstra. Row ``k`` starts at
    sample ``160 k``, as the MFCC rows of :mod:`talkinghead.audio.features` do. The model's noise
    removal (``-remove_noise``) is left out. The floor is relative and the cepstral mean is the
    utterance's, so a gain change of the audio does not change the posteriors (tests).

Why written here
    pocketsphinx's Python API decodes; it does not expose the acoustic scores per frame. The
    model files are read with a reader of Sphinx's ``s3`` binary format (:func:`read_s3_gaussians`).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import scipy.fft

from talkinghead.errors import ConfigError, InputError

SAMPLE_RATE = 16000
FRAME_SAMPLES = 410  # Sphinx -wlen 0.025625 at 16 kHz
HOP_SAMPLES = 160  # -frate 100
NFFT = 512
PREEMPHASIS = 0.97
NUM_CEPSTRA = 13
POSTERIOR_FLOOR = 1e-4  # log(posterior + floor): bounded below at log(1e-4) = -9.2
MEL_FLOOR = 1e-12  # mel energies are floored 120 dB below the utterance's largest
_BLOCK_ROWS = 2000  # rows scored at once (bounds temporary memory to ~90 MB)

#: The acoustic model's context-independent phones, in its order (``mdef``).
PHONES = ("+NSN+ +SPN+ AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH SIL "
          "T TH UH UW V W Y Z ZH").split()
NUM_PHONES = len(PHONES)  # 42
_S3_MAGIC = 0x11223344


#: Environment variable naming another model folder (``means``, ``variances``, ``feat.params``
#: of a Sphinx PTM model), e.g. the files carried to a machine without pocketsphinx (docs/gpu.md).
MODEL_DIR_ENV = "TALKINGHEAD_PHONE_MODEL"
#: The files of a model folder this module reads.
MODEL_FILES = ("means", "variances", "feat.params")


def default_model_dir() -> Path:
    """``$TALKINGHEAD_PHONE_MODEL`` if set, else the English acoustic model inside the installed
    ``pocketsphinx`` package; a one-line :class:`ConfigError` naming the package when it is not
    installed."""
    if os.environ.get(MODEL_DIR_ENV):
        return Path(os.environ[MODEL_DIR_ENV]).expanduser()
    try:
        import pocketsphinx  # local: only the phone features need it (0.1 s import)
    except ImportError:
        raise ConfigError("audio2coeff.model.features=phones needs the pocketsphinx package "
                          "(python -m pip install 'pocketsphinx>=5,<6'; it carries the English acoustic model), "
                          "or use audio2coeff.model.features=mfcc") from None
    return Path(pocketsphinx.get_model_path()) / "en-us" / "en-us"


def read_s3_gaussians(path: str | os.PathLike) -> np.ndarray:
    """A Sphinx ``s3`` Gaussian file (``means`` or ``variances``) as float32
    ``[codebooks, streams, densities, dims]``: an ASCII header ending in ``endhdr\\n``, the
    int32 byte-order mark 0x11223344, the int32 counts (codebooks, streams, densities, each
    stream's length, the total) and the float32 values."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InputError(f"cannot read the acoustic model file {path}: {err.strerror}; reinstall pocketsphinx") from None
    start = raw.find(b"endhdr\n")
    if not raw.startswith(b"s3") or start < 0:
        raise InputError(f"{path} is not a Sphinx s3 file (no 's3 ... endhdr' header)")
    start += len(b"endhdr\n")
    order = "<" if np.frombuffer(raw[start:start + 4], "<u4")[0] == _S3_MAGIC else ">"
    head = np.frombuffer(raw[start + 4:start + 16], f"{order}i4")
    codebooks, streams, densities = (int(v) for v in head)
    dims = np.frombuffer(raw[start + 16:start + 16 + 4 * streams], f"{order}i4")
    offset = start + 16 + 4 * streams
    total = int(np.frombuffer(raw[offset:offset + 4], f"{order}i4")[0])
    if len(set(dims.tolist())) != 1 or total != codebooks * densities * int(dims.sum()):
        raise InputError(f"{path}: unsupported s3 layout (streams of lengths {dims.tolist()}, {total} values)")
    values = np.frombuffer(raw[offset + 4:offset + 4 + 4 * total], f"{order}f4")
    if values.size != total:
        raise InputError(f"{path} is truncated ({values.size} of {total} values)")
    return values.reshape(codebooks, streams, densities, int(dims[0])).astype(np.float32)


def _feat_params(model_dir: Path) -> dict[str, str]:
    text = (model_dir / "feat.params").read_text()
    tokens = text.split()
    return dict(zip(tokens[0::2], tokens[1::2]))


class AcousticModel:
    """The Gaussians and front-end settings of a Sphinx PTM model folder (``default_model_dir()``)."""

    def __init__(self, model_dir: str | os.PathLike):
        model_dir = Path(model_dir)
        missing = [n for n in MODEL_FILES if not (model_dir / n).is_file()]
        if missing:
            raise InputError(f"acoustic model folder {model_dir} lacks {', '.join(missing)}; reinstall pocketsphinx")
        params = _feat_params(model_dir)
        if params.get("-feat", "1s_c_d_dd") != "1s_c_d_dd" or params.get("-transform", "dct") != "dct":
            raise InputError(f"{model_dir}/feat.params: only -feat 1s_c_d_dd with -transform dct is supported")
        self.lower_hz = float(params.get("-lowerf", 130))
        self.upper_hz = float(params.get("-upperf", 6800))
        self.num_filters = int(params.get("-nfilt", 25))
        self.lifter = int(params.get("-lifter", 22))
        means = read_s3_gaussians(model_dir / "means").astype(np.float64)  # [42, 3, 128, 13]
        variances = read_s3_gaussians(model_dir / "variances").astype(np.float64)
        if means.shape != variances.shape or means.shape[0] != NUM_PHONES or means.shape[1] != 3:
            raise InputError(f"{model_dir}: expected {NUM_PHONES} phone codebooks of 3 streams, got {means.shape}")
        self.dead = (variances <= 0).all(-1)  # [42, 3, 128] unused densities (all-zero variance)
        variances = np.maximum(variances, 1e-4)  # Sphinx's variance floor
        inv = 1.0 / variances
        k = means.shape[0] * means.shape[2]
        # Per stream s: log N(x) = x^2 . a + x . b + c for all 42 x 128 densities at once.
        self.quad = [(-0.5 * inv[:, s]).reshape(k, -1).T for s in range(3)]  # 3 x [13, 5376]
        self.lin = [(means[:, s] * inv[:, s]).reshape(k, -1).T for s in range(3)]
        const = -0.5 * (np.log(2 * np.pi * variances) + means ** 2 * inv).sum(-1)  # [42, 3, 128]
        self.const = [np.where(self.dead[:, s], -np.inf, const[:, s]).reshape(-1) for s in range(3)]
        self.log_count = [np.log((~self.dead[:, s]).sum(-1)) for s in range(3)]  # [42]
        self.filters = self._mel_filters()  # [nfilt, 257]

    def _mel_filters(self) -> np.ndarray:
        mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
        hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
        edges = hz(np.linspace(mel(self.lower_hz), mel(self.upper_hz), self.num_filters + 2))
        freqs = np.arange(NFFT // 2 + 1) * SAMPLE_RATE / NFFT
        left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
        rise, fall = (freqs - left) / (centre - left), (right - freqs) / (right - centre)
        return np.clip(np.minimum(rise, fall), 0.0, None) * 2.0 / (right - left)  # unit area

    def cepstra(self, audio: np.ndarray) -> np.ndarray:
        """Sphinx cepstra of mono 16 kHz ``audio [S]`` minus their utterance mean: ``[rows, 13]``."""
        x = np.asarray(audio, np.float64) * 32768.0  # Sphinx works on 16-bit sample values
        x = np.append(x[:1], x[1:] - PREEMPHASIS * x[:-1])
        rows = max(1, 1 + (len(x) - FRAME_SAMPLES) // HOP_SAMPLES)
        x = np.pad(x, (0, max(0, (rows - 1) * HOP_SAMPLES + FRAME_SAMPLES - len(x))))
        window = np.hamming(FRAME_SAMPLES)
        lifter = 1.0 + self.lifter / 2.0 * np.sin(np.pi * np.arange(NUM_CEPSTRA) / self.lifter)
        mel = np.empty((rows, self.num_filters))
        for r0 in range(0, rows, _BLOCK_ROWS):  # blocks bound the [rows, 410] frame matrix
            r1 = min(rows, r0 + _BLOCK_ROWS)
            frames = np.lib.stride_tricks.sliding_window_view(x[r0 * HOP_SAMPLES:(r1 - 1) * HOP_SAMPLES + FRAME_SAMPLES],
                                                              FRAME_SAMPLES)[::HOP_SAMPLES] * window  # [n, 410]
            power = np.abs(np.fft.rfft(frames, NFFT)) ** 2  # [n, 257]
            mel[r0:r1] = power @ self.filters.T  # [n, 25]
        # Floor 120 dB below the utterance's loudest band (digital silence has no log): relative, so
        # a gain change scales energies and floor alike and the cepstral mean removes it exactly.
        log_mel = np.log(np.maximum(mel, max(float(mel.max()), 1e-30) * MEL_FLOOR))  # [rows, 25]
        out = scipy.fft.dct(log_mel, type=2, norm="ortho", axis=1)[:, :NUM_CEPSTRA] * lifter
        return out - out.mean(axis=0)

    def log_posteriors(self, audio: np.ndarray) -> np.ndarray:
        """``log(posterior + 1e-4)`` of the 42 phones per 10 ms row: float32 ``[rows, 42]``."""
        cep = self.cepstra(audio)  # [T, 13]
        rows = len(cep)
        at = lambda k: cep[np.clip(np.arange(rows) + k, 0, rows - 1)]  # noqa: E731
        delta = at(2) - at(-2)
        streams = (cep, delta, (at(3) - at(-1)) - (at(1) - at(-3)))  # Sphinx 1s_c_d_dd
        out = np.empty((rows, NUM_PHONES), np.float32)
        for r0 in range(0, rows, _BLOCK_ROWS):
            r1 = min(rows, r0 + _BLOCK_ROWS)
            loglik = np.zeros((r1 - r0, NUM_PHONES))
            for s, x in enumerate(streams):
                x = x[r0:r1]
                dens = (x ** 2) @ self.quad[s] + x @ self.lin[s] + self.const[s]  # [n, 42*128]
                dens = dens.reshape(r1 - r0, NUM_PHONES, -1)
                top = dens.max(-1, keepdims=True)
                loglik += top[..., 0] + np.log(np.exp(dens - top).sum(-1)) - self.log_count[s]
            loglik -= loglik.max(1, keepdims=True)
            post = np.exp(loglik)
            out[r0:r1] = np.log(post / post.sum(1, keepdims=True) + POSTERIOR_FLOOR)
        return out


@lru_cache(maxsize=2)
def acoustic_model(model_dir: str | None = None) -> AcousticModel:
    """The acoustic model of ``model_dir`` (default: :func:`default_model_dir`), cached per folder."""
    return AcousticModel(model_dir or default_model_dir())


def phone_log_posteriors(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Per-10-ms-row phone log posteriors of mono ``audio [S]`` at 16 kHz: float32 ``[rows, 42]``
    (columns in :data:`PHONES` order; see the module docstring)."""
    if sample_rate != SAMPLE_RATE:
        raise InputError(f"phone posteriors need {SAMPLE_RATE} Hz audio, got {sample_rate} Hz; resample it first")
    audio = np.asarray(audio, np.float32)
    if audio.ndim != 1:
        raise InputError(f"phone posteriors need mono audio [samples], got shape {audio.shape}")
    return acoustic_model(str(default_model_dir())).log_posteriors(audio)
