"""Stage 1: audio (MFCC or phone-posterior windows) -> expression and head pose (method.md section 4).

:class:`ExpressionPoseLSTM` maps a sequence of audio windows, one per video frame, to a
70-d vector per frame in the layout of :func:`talkinghead.face.coeffs.stage1_target`:
64 expression coefficients, 3 Euler angles, 3 translations (translation z shifted by -0.5).
The paper's windows are 28 x 12 MFCC (``features="mfcc"``); ``features="phones"`` (the CPU
preset's default) feeds 28 x 42 phone log posteriors of an acoustic model trained on real speech
(:mod:`talkinghead.audio.phones`) through a phone encoder instead of the CNN, and
``"mfcc+phones"`` feeds both (the CNN sees the MFCC columns, the phone encoder the rest).

Architecture at its default width (the authors' ``ATC_net``)::

    per time step (run batched over B*T):
      [1, 28, 12]  conv3x3 1->64, BN, ReLU; conv3x3 64->128, BN, ReLU     (padding 1, no bias)
      [128, 28, 12] max-pool 3, stride (1, 2), no padding          -> [128, 26, 5]
                   conv3x3 128->256, 256->256, 256->512, BN, ReLU each
      [512, 26, 5] max-pool 3, stride 2, no padding                -> [512, 12, 2]
      flatten 512 * 12 * 2 = 12,288 -> linear 2048, ReLU -> linear 256, ReLU
    (features="phones": [28, 42] flattened -> linear phone_dim, ReLU, in place of the CNN;
     "mfcc+phones": CNN output and phone encoder output concatenated before the linear 2048)
    3-layer LSTM (hidden 256, zero initial state) over time -> linear 256 -> 70

``width`` scales the conv channels and ``fc_dim``/``embed_dim``/``hidden``/``layers`` shrink
the rest for CPU presets; the code path is the same at every size.

The loss (:func:`stage1_loss`) was checked against the authors' training script
(``Audio/code/atcnet.py`` of yiranran/Audio-driven-TalkingFace-HeadPose): the temporal
smoothness terms penalise consecutive-frame differences of the PREDICTION alone (not the
difference between predicted and target deltas).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from talkinghead.audio.augment import average_over_rates
from talkinghead.audio.features import check_features, iter_frame_windows, num_video_frames
from talkinghead.audio.phones import NUM_PHONES
from talkinghead.errors import ConfigError, InputError, TrainingError
from talkinghead.stagedir import AUDIO2COEFF as STAGE, MODEL_FILE, WEIGHTS_FILE
from talkinghead.face.coeffs import EXP_DIM, POSE_DIM
from talkinghead.weights import load_weights

#: One MFCC window per video frame: 28 MFCC rows (280 ms) x 12 cepstra (method.md section 3).
WINDOW_SHAPE = (28, 12)
#: Conv channels at width 1.0, in order.
BASE_CHANNELS = (64, 128, 256, 256, 512)
#: Output width: 64 expression + 3 angles + 3 translation.
STAGE1_DIM = EXP_DIM + POSE_DIM

LSTMState = tuple[torch.Tensor, torch.Tensor]  # (h, c), each [layers, B, hidden]


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv (padding 1, no bias: BN follows) + BatchNorm + ReLU; keeps the spatial size."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=1, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _pool_out(size: int, kernel: int, stride: int) -> int:
    """Output length of an unpadded max-pool along one axis."""
    return (size - kernel) // stride + 1


def encoder_output_shape(window_shape: tuple[int, int] = WINDOW_SHAPE) -> tuple[int, int]:
    """Spatial size ``(H, W)`` of the audio CNN's output for an MFCC window of ``window_shape``.

    The convs keep the size (3x3, padding 1); pool 1 is 3 x 3 with stride (1, 2), pool 2 is
    3 x 3 with stride 2, both unpadded: 28 x 12 -> 26 x 5 -> 12 x 2.
    """
    h, w = window_shape
    h, w = _pool_out(h, 3, 1), _pool_out(w, 3, 2)
    h, w = _pool_out(h, 3, 2), _pool_out(w, 3, 2)
    return h, w


class ExpressionPoseLSTM(nn.Module):
    """Audio-to-(expression, pose) network of method.md section 4.

    Args:
        width: multiplier on the conv channels (64, 128, 256, 256, 512); 1.0 is the paper's.
        fc_dim: width of the first fully connected layer (2048).
        embed_dim: per-frame audio embedding fed to the LSTM (256).
        hidden: LSTM hidden size (256).
        layers: LSTM layers (3).
        out_dim: output size per frame (70 = 64 expression + 6 pose).
        window_shape: MFCC window ``(rows, cepstra)`` per frame (28, 12).
        features: the audio input, ``mfcc`` (the paper's), ``phones`` or ``mfcc+phones``
            (:data:`talkinghead.audio.features.AUDIO_FEATURES`); the input window is then
            ``[rows, 12]``, ``[rows, 42]`` or ``[rows, 54]`` (:attr:`window_shape`).
        phone_dim: width of the phone encoder's output (phone features only).
    """

    def __init__(
        self,
        width: float = 1.0,
        fc_dim: int = 2048,
        embed_dim: int = 256,
        hidden: int = 256,
        layers: int = 3,
        out_dim: int = STAGE1_DIM,
        window_shape: tuple[int, int] = WINDOW_SHAPE,
        features: str = "mfcc",
        phone_dim: int = 128,
    ):
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        c1, c2, c3, c4, c5 = (max(1, round(c * width)) for c in BASE_CHANNELS)
        self.features = check_features(features)
        self.uses_mfcc = "mfcc" in self.features
        #: Phone-posterior columns at the end of each window row (0: MFCC only).
        self.phone_columns = NUM_PHONES if "phones" in self.features else 0
        mfcc_shape = tuple(window_shape)
        #: The input window per frame: ``(rows, MFCC columns + phone columns)``.
        self.window_shape = (mfcc_shape[0], (mfcc_shape[1] if self.uses_mfcc else 0) + self.phone_columns)
        self.hidden = hidden
        self.layers = layers
        self.out_dim = out_dim

        self.audio_encoder = nn.Sequential(
            _conv_bn_relu(1, c1),
            _conv_bn_relu(c1, c2),
            nn.MaxPool2d(kernel_size=3, stride=(1, 2)),
            _conv_bn_relu(c2, c3),
            _conv_bn_relu(c3, c4),
            _conv_bn_relu(c4, c5),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        out_h, out_w = encoder_output_shape(mfcc_shape)
        if self.uses_mfcc and (out_h < 1 or out_w < 1):
            raise ValueError(f"MFCC window {mfcc_shape} is too small for the audio CNN")
        if not self.uses_mfcc:
            # phones only: no CNN. It is built above all the same, so that the layers after it draw
            # the same initial weights for every choice of features (comparisons start equal).
            self.audio_encoder = None
        if self.phone_columns:
            self.phone_encoder = nn.Sequential(nn.Linear(self.window_shape[0] * self.phone_columns, phone_dim),
                                               nn.ReLU(inplace=True))
        #: Per-frame input of audio_fc: the flattened CNN output (12,288 at width 1.0 for 28 x 12
        #: windows) and/or the phone encoder's output.
        self.flat_dim = (c5 * out_h * out_w if self.uses_mfcc else 0) + (phone_dim if self.phone_columns else 0)
        self.audio_fc = nn.Sequential(
            nn.Linear(self.flat_dim, fc_dim),
            nn.ReLU(inplace=True),
            nn.Linear(fc_dim, embed_dim),
            nn.ReLU(inplace=True),
        )
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, out_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The authors' init: conv/linear weights N(0, 0.02) and biases 0; BatchNorm weights
        N(1, 0.02) and biases 0. The LSTM keeps PyTorch's default init (as in the original,
        whose init function only matched Conv/Linear/BatchNorm2d classes)."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def _check_windows(self, windows: torch.Tensor) -> None:
        if not isinstance(windows, torch.Tensor) or windows.ndim != 4 or tuple(windows.shape[-2:]) != self.window_shape:
            shape = tuple(windows.shape) if hasattr(windows, "shape") else type(windows).__name__
            raise InputError(
                f"Stage-1 input 'windows' must be a tensor [B, T, {self.window_shape[0]}, {self.window_shape[1]}] "
                f"of {self.features} windows, got {shape}; build them with "
                f"talkinghead.audio.features.frame_windows(..., features={self.features!r}) (one per frame)"
            )

    def encode_audio(self, windows: torch.Tensor) -> torch.Tensor:
        """Per-frame audio embedding: ``[B, T, 28, C]`` -> ``[B, T, embed_dim]`` (the CNN and the
        phone encoder run once over all B*T windows)."""
        self._check_windows(windows)
        b, t = windows.shape[:2]
        x = windows.reshape(b * t, 1, *self.window_shape)  # [B*T, 1, 28, C]
        parts = []
        if self.uses_mfcc:
            mfcc = x[..., :x.shape[-1] - self.phone_columns] if self.phone_columns else x  # [B*T, 1, 28, 12]
            parts.append(self.audio_encoder(mfcc).flatten(1))  # [B*T, c5 * 12 * 2]
        if self.phone_columns:
            parts.append(self.phone_encoder(x[..., -self.phone_columns:].flatten(1)))  # [B*T, phone_dim]
        x = self.audio_fc(parts[0] if len(parts) == 1 else torch.cat(parts, dim=1))  # [B*T, embed]
        return x.reshape(b, t, -1)

    def forward(self, windows: torch.Tensor, state: LSTMState | None = None) -> tuple[torch.Tensor, LSTMState]:
        """``windows [B, T, 28, 12]`` -> ``(pred [B, T, out_dim], state)``.

        ``state`` is the LSTM's ``(h, c)`` (each ``[layers, B, hidden]``); ``None`` means the
        zero initial state. Passing the returned state into the next call continues the
        sequence, so long audio can be processed in chunks (identical to one pass in eval
        mode, where BatchNorm uses its running statistics).
        """
        features = self.encode_audio(windows)  # [B, T, embed]
        lstm_out, state = self.lstm(features, state)  # [B, T, hidden]
        return self.head(lstm_out), state


@torch.no_grad()
def predict_sequence(model: ExpressionPoseLSTM, windows: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """Inference over one whole utterance: ``windows [N, 28, 12]`` -> ``pred [N, out_dim]``.

    Runs in eval mode as a single sequence (method.md: "the whole utterance as one
    sequence"), in chunks of ``chunk`` frames with the LSTM state carried across chunks to
    bound memory. The model's train/eval mode is restored afterwards.
    """
    if windows.ndim != 3:
        raise InputError(f"predict_sequence expects MFCC windows [N, 28, 12], got {tuple(windows.shape)}")
    was_training = model.training
    model.eval()
    try:
        state: LSTMState | None = None
        outputs = []
        for start in range(0, windows.shape[0], max(1, chunk)):
            pred, state = model(windows[None, start:start + chunk], state)
            outputs.append(pred[0])
        if not outputs:
            return windows.new_zeros(0, model.out_dim)
        return torch.cat(outputs, 0)
    finally:
        model.train(was_training)


def _temporal_energy(x: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the sum over time and dims of squared consecutive-frame
    differences: ``[B, T, D]`` -> scalar."""
    diff = x[:, 1:] - x[:, :-1]  # [B, T-1, D]
    return diff.square().sum(dim=(1, 2)).mean()


def stage1_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    pose_weight: float = 0.2,
    pose_smooth_weight: float = 0.01,
    expression_smooth_weight: float = 1e-4,
    exp_dim: int = EXP_DIM,
) -> dict[str, torch.Tensor]:
    """Stage-1 training loss (method.md section 4), ``pred`` and ``target`` ``[B, T, 70]``::

        total = MSE(pred_exp, target_exp)                      # "expression"
              + 0.2    * MSE(pred_pose, target_pose)           # "pose"
              + 0.01   * mean_b sum_{t,d} (pred_pose[b,t+1,d] - pred_pose[b,t,d])^2   # "pose_smooth"
              + 1e-4   * mean_b sum_{t,d} (pred_exp[b,t+1,d]  - pred_exp[b,t,d])^2    # "expression_smooth"

    MSE is the mean over batch, time and dims. The smoothness terms apply to the prediction
    alone (verified against the authors' ``atcnet.py``: ``frame_dif = fake[:,1:,L:] -
    fake[:,:-1,L:]``). Returns a dict with ``total`` (the weighted sum, to backpropagate) and
    the four terms UNweighted (for logging).
    """
    if pred.shape != target.shape or pred.ndim != 3 or pred.shape[-1] <= exp_dim:
        raise InputError(
            f"stage1_loss needs pred and target of the same shape [B, T, {exp_dim}+pose], "
            f"got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    pred_exp, pred_pose = pred[..., :exp_dim], pred[..., exp_dim:]
    expression = F.mse_loss(pred_exp, target[..., :exp_dim])
    pose = F.mse_loss(pred_pose, target[..., exp_dim:])
    pose_smooth = _temporal_energy(pred_pose)
    expression_smooth = _temporal_energy(pred_exp)
    total = (
        expression
        + pose_weight * pose
        + pose_smooth_weight * pose_smooth
        + expression_smooth_weight * expression_smooth
    )
    return {
        "total": total,
        "expression": expression,
        "pose": pose,
        "pose_smooth": pose_smooth,
        "expression_smooth": expression_smooth,
    }


def make_optimizer(model: nn.Module, lr: float = 2e-4) -> torch.optim.Adam:
    """Adam with betas (0.5, 0.999), as in the original (lr 2e-4 general, 1e-4 fine-tuning)."""
    return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.999))


# ----------------------------------------------------------------------------------------------
# A trained Stage-1 folder (talkinghead/stagedir.py): the names and the model.json check
# ----------------------------------------------------------------------------------------------
#: Name of the model inside checkpoints and weights files.
MODEL_NAME = "audio2coeff"
#: The fine-tuned model's per-person ridge and its blend (audio2coeff.finetune.person_ridge).
RESIDUAL_FILE = "person_ridge.npz"
#: The fine-tuned model's copy of the general weights it blends with (audio2coeff.finetune.general_weight).
GENERAL_WEIGHTS_FILE = "general_weights.safetensors"
#: A fine-tuned soup's head-pose network: the run's own weights before the average
#: (audio2coeff.finetune.soup; averaged weights move the head less).
POSE_WEIGHTS_FILE = "pose_weights.safetensors"
#: The command that produces a general Stage-1 model (quoted in errors).
GENERAL_COMMAND = "python scripts/train.py stage=audio2coeff data.root=DATA out={out}"
#: ExpressionPoseLSTM constructor arguments a config may set.
MODEL_KEYS = ("width", "fc_dim", "embed_dim", "hidden", "layers", "features", "phone_dim")


class NormalizedExpressionPoseLSTM(ExpressionPoseLSTM):
    """:class:`ExpressionPoseLSTM` that first standardises each column of its windows (the 12
    cepstra and/or the 42 phone log posteriors): ``(windows - input_mean) / input_std`` (buffers
    ``[C]``, saved with the weights; identity until :meth:`set_input_stats`).

    Why: raw MFCC columns differ in offset (-17 .. +1) and spread (8 .. 26); the first conv has
    no bias and its BatchNorm removes one offset per channel, not per column. On the synthetic
    corpus, standardised inputs raised the held-out correlation of the mouth coefficients after
    300 steps of the CPU preset from about 0.5 to 0.65. General training sets the statistics
    from its training windows (``audio2coeff.train.input_norm``); fine-tuning keeps the
    general model's.

    The attribute ``cmvn`` (from ``model.json``; default False) says whether the windows are
    standardised per utterance before that (:func:`talkinghead.audio.features.frame_windows`
    ``cmvn=True``); whoever computes the windows applies it (training data, inference).

    The attribute ``speed_ensemble`` (from ``model.json``; default ``(1.0,)``: off) lists the
    speaking rates whose outputs :func:`predict_audio` averages.

    The buffer ``expression_centered`` records whether the expression output is relative to
    the person's reference expression (``audio2coeff.train.center_expression``; see
    :mod:`talkinghead.data.stage1_dataset`); fine-tuning inherits it with the weights.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        columns = self.window_shape[1]
        self.register_buffer("input_mean", torch.zeros(columns))
        self.register_buffer("input_std", torch.ones(columns))
        # True: the expression output is relative to the person's reference expression
        # (trained with Stage1WindowDataset(center_expression=True); inference adds it back).
        self.register_buffer("expression_centered", torch.tensor(False))
        self.cmvn = False  # per-utterance CMVN of the windows (model.json "cmvn"; applied by the caller)
        self.speed_ensemble: tuple[float, ...] = (1.0,)  # speaking rates averaged by predict_audio (model.json)

    @torch.no_grad()
    def set_input_stats(self, windows: torch.Tensor) -> None:
        """Per-column mean and std of ``windows [..., C]`` (e.g. all training windows)."""
        flat = windows.reshape(-1, windows.shape[-1]).double()  # [M, C]
        self.input_mean.copy_(flat.mean(dim=0))
        self.input_std.copy_(flat.std(dim=0).clamp_min(1e-3))

    def encode_audio(self, windows: torch.Tensor) -> torch.Tensor:
        self._check_windows(windows)
        return super().encode_audio((windows - self.input_mean) / self.input_std)


def load_network(model_kwargs: dict[str, Any], weights: str | os.PathLike, cmvn: bool = False,
                 speed_ensemble: Sequence[float] = (1.0,)) -> "NormalizedExpressionPoseLSTM":
    """A :class:`NormalizedExpressionPoseLSTM` of ``model_kwargs`` with the weights file
    ``weights`` (``MODEL_NAME`` inside it), its ``cmvn`` flag and ``speed_ensemble``, in eval
    mode on the CPU."""
    model = NormalizedExpressionPoseLSTM(**model_kwargs)
    load_weights({MODEL_NAME: model}, weights)
    model.cmvn = bool(cmvn)
    model.speed_ensemble = check_speed_ensemble(speed_ensemble, f"{weights} (model.json speed_ensemble)")
    return model.eval()


# ----------------------------------------------------------------------------------------------
# Inference on audio: one utterance, optionally averaged over speaking rates
# ----------------------------------------------------------------------------------------------
#: The range a speed-ensemble rate must lie in.
SPEED_RANGE = (0.5, 2.0)


def check_speed_ensemble(rates, key: str) -> tuple[float, ...]:
    """``rates`` (a non-empty list of speaking rates in :data:`SPEED_RANGE`) as a tuple; anything
    else is a one-line :class:`ConfigError` naming ``key``."""
    try:
        values = tuple(float(r) for r in rates)
    except (TypeError, ValueError):
        values = ()
    if not values or not all(SPEED_RANGE[0] <= r <= SPEED_RANGE[1] for r in values):
        raise ConfigError(f"{key}={rates!r} must be a non-empty list of speaking rates in "
                          f"[{SPEED_RANGE[0]}, {SPEED_RANGE[1]}], e.g. [1.0] (off) or [0.92, 0.96, 1.0, 1.04, 1.08]")
    return values


@torch.no_grad()
def _predict_at_rate(model: ExpressionPoseLSTM, audio: np.ndarray, num_frames: int, chunk_frames: int,
                     device: torch.device, general: ExpressionPoseLSTM | None, general_weight: float,
                     pose_network: ExpressionPoseLSTM | None = None) -> torch.Tensor:
    """The network's output ``[num_frames, 70]`` (float32, CPU) for ``audio`` as one utterance:
    blocks of ``chunk_frames`` windows, the LSTM state carried across them. ``pose_network``
    (same inputs): its pose replaces the model's, computed from the same windows."""
    state = general_state = pose_state = None
    outputs = []
    use_general = general is not None and general_weight > 0.0
    for block in iter_frame_windows(audio, chunk_frames=chunk_frames, num_frames=num_frames,
                                    cmvn=bool(getattr(model, "cmvn", False)), features=model.features):  # [n, 28, C]
        windows = torch.from_numpy(block)[None].to(device)
        pred, state = model(windows, state)  # [1, n, 70]
        if use_general:
            general_pred, general_state = general(windows, general_state)
            pred = blend_with_general(pred, general_pred, general_weight)
        if pose_network is not None:
            pose_pred, pose_state = pose_network(windows, pose_state)
            pred = torch.cat([pred[..., :EXP_DIM], pose_pred[..., EXP_DIM:]], dim=-1)
        outputs.append(pred[0].float().cpu())
    return torch.cat(outputs) if outputs else torch.zeros(0, model.out_dim)


def predict_audio(model: ExpressionPoseLSTM, audio: np.ndarray, num_frames: int | None = None, chunk_frames: int = 250,
                  device: str | torch.device = "cpu", general: ExpressionPoseLSTM | None = None,
                  general_weight: float = 0.0) -> np.ndarray:
    """The Stage-1 network's output for every 25 fps frame of mono 16 kHz ``audio [S]``, an
    utterance of its own: float32 ``[N, 70]`` (``N`` = ``num_frames``, default the
    audio's length in frames). With ``general`` the expression is the fine-tuned model's blend
    ``(1 - general_weight) * model + general_weight * general`` (:func:`blend_with_general`).

    The speed ensemble (``model.speed_ensemble``, from ``model.json``): the utterance is also
    played at each other rate ``r`` (:func:`~talkinghead.audio.augment.speed_perturb`: tempo and
    pitch scale together, as a faster or slower speaker with a shorter or longer vocal tract),
    the network runs on each, and its expression at played frame ``t / r`` (linear interpolation)
    is averaged with the others for frame ``t``
    (:func:`~talkinghead.audio.augment.average_over_rates`). The head pose is the pass over the
    audio as it is: averaged over the rates the predicted head moved less, and the demo's
    keyframe-matched pose fell from HS 0.93 to 0.70. Likewise a fine-tuned soup's pose comes
    from ``model.pose_network`` (one run's weights, :data:`POSE_WEIGHTS_FILE`) when it has one. Why (README, session 26): a network
    trained on synthetic voices reacts to details of a real voice that a small change of rate
    moves; the average keeps what all rates agree on. On the synthetic held-out persons, rates
    0.92-1.08 raised the lip-sync correlation 0.896 -> 0.913, on 31.mp4 (cross-validated) 0.314 -> 0.342;
    Gaussian smoothing of the output over time lowered both. Memory stays bounded by
    ``chunk_frames`` per rate (the played copy of the audio is the only whole-length addition).
    """
    audio = np.asarray(audio, dtype=np.float32)
    if num_frames is None:
        num_frames = num_video_frames(audio.shape[0])
    device = torch.device(device) if not isinstance(device, torch.device) else device
    rates = tuple(getattr(model, "speed_ensemble", (1.0,)) or (1.0,))

    def predict(played: np.ndarray, frames: int, pose_network: ExpressionPoseLSTM | None = None) -> np.ndarray:
        return _predict_at_rate(model, played, frames, chunk_frames, device, general, general_weight,
                                pose_network).numpy()

    pose_network = getattr(model, "pose_network", None)  # a soup's: one run's weights, not the average
    if pose_network is not None:
        pose_network.to(device).eval()
    out = predict(audio, num_frames, pose_network)  # [N, 70] the audio as it is: the head pose comes from this pass alone
    others = tuple(rate for rate in rates if rate != 1.0)
    if others:
        ones = len(rates) - len(others)  # how often rate 1.0 is listed (0: the expression averages the others only)
        expression = (ones * out[:, :EXP_DIM] + len(others) * average_over_rates(predict, audio, num_frames, others)[:, :EXP_DIM])
        out[:, :EXP_DIM] = expression / len(rates)
    return out


def blend_with_general(pred: torch.Tensor, general_pred: torch.Tensor, general_weight: float) -> torch.Tensor:
    """The fine-tuned model's exported output (``audio2coeff.finetune.general_weight``): Stage-1
    outputs ``[..., 70]`` of the fine-tuned and the general network -> ``[..., 70]`` whose
    expression is ``(1 - w) * fine-tuned + w * general`` and whose pose is the fine-tuned one."""
    expression = (1.0 - general_weight) * pred[..., :EXP_DIM] + general_weight * general_pred[..., :EXP_DIM]
    return torch.cat([expression, pred[..., EXP_DIM:]], dim=-1)


def read_model_json(model_dir: str | os.PathLike, command: str | None = None) -> dict[str, Any]:
    """``DIR/model.json`` of a Stage-1 run, checked; a missing or foreign file is a one-line
    :class:`TrainingError` naming the directory and ``command`` (what creates it)."""
    model_dir = Path(model_dir).expanduser()
    command = command or GENERAL_COMMAND.format(out=model_dir)
    path = model_dir / MODEL_FILE
    if not path.is_file() or not (model_dir / WEIGHTS_FILE).is_file():
        raise TrainingError(
            f"no trained Stage-1 model in {model_dir} (model.json / weights.safetensors missing); create it with `{command}`"
        )
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise TrainingError(f"{path} is not valid JSON ({err.msg}); re-create it with `{command}`") from None
    if info.get("stage") != STAGE or not isinstance(info.get("model"), dict):
        raise TrainingError(f"{path} does not describe a Stage-1 (audio2coeff) model; point at the audio2coeff directory")
    unknown = sorted(set(info["model"]) - set(MODEL_KEYS))
    if unknown:
        raise TrainingError(f"{path}: unknown model key {unknown[0]!r}; it was written by another version, re-train it")
    return info
