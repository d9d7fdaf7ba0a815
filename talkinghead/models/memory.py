"""Identity memory of the Stage-2 refiner (method.md section 7), after MemoPainter.

MemoPainter (Yoo et al., CVPR 2019) keeps a key-value memory: keys are L2-normalised image
features (queries), values are the features to be retrieved (colour distributions there,
512-d identity features here). Yi et al. reuse it to recall *who* is in a rendered frame at
test time, when no real photo of frame t exists to compute an identity feature from.

Three operations, all following the authors' public code (``memory_network.py``):

* **read** -- the value of the key most similar to the query (cosine), optionally a
  softmax-weighted mix of the top-k values.
* **margin loss** (MemoPainter's "threshold triplet loss") -- among the ``top_k`` keys most
  similar to the query, the *positive* is the most similar key whose value matches the
  query's true value (cosine of values above ``threshold``) and the *negative* the most
  similar one that does not; the loss is ``relu(sim_neg - sim_pos + margin)``. Only the query
  receives gradient (the memory is a set of buffers).
* **update** (no gradient) -- every call first ages every slot by 1; then per item, if the
  nearest key's value matches, the key is merged: ``key <- normalize(key + query)`` and its age
  reset to 0; the value is left unchanged (MemoPainter merges keys only; checked against the
  public code). Otherwise (query, value) is written into the oldest slot -- empty slots first --
  with age 0.

Deviations from the public code, on purpose: (1) empty slots are tracked (``filled``) instead of
initialising all 30,000 keys with random noise, so reads and losses only ever see written
entries; (2) an item with no positive (or no negative) among its top-k contributes 0 to the
loss, where the public code silently used a similarity of 0 for the missing side; (3) the
random jitter MemoPainter adds to ages when choosing the slot to overwrite (``age_noise``,
4.0 there) defaults to 0 here so that replacement is deterministic -- multi-process training
relies on it: every process applies the same update and must get the same memory; pass
``age_noise=4.0`` to get it back (single process).

All state lives in buffers, so it is saved and loaded with the module's ``state_dict`` (and
through safetensors: float32 keys/values, int64 ages, bool filled).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from talkinghead.errors import InputError, MissingWeightsError

__all__ = ["IdentityMemory", "interpolate_identity"]


class IdentityMemory(nn.Module):
    """Key-value memory mapping image queries to identity features.

    Args:
        slots: number of memory entries (30,000 in the paper).
        key_dim: size of the (L2-normalised) keys / queries.
        value_dim: size of the stored identity features (512 for ArcFace).
        top_k: how many nearest keys the margin loss looks at (256).
        margin: hinge margin of the loss (0.3).
        threshold: two values "match" (same person) when their cosine exceeds this (0.98).
        age_noise: uniform jitter in ``[-age_noise, age_noise]`` added to ages when choosing
            the slot to overwrite (MemoPainter: 4.0; default 0 = strictly the oldest).
    """

    def __init__(
        self,
        slots: int = 30000,
        key_dim: int = 512,
        value_dim: int = 512,
        top_k: int = 256,
        margin: float = 0.3,
        threshold: float = 0.98,
        age_noise: float = 0.0,
    ):
        super().__init__()
        if slots < 1 or key_dim < 1 or value_dim < 1 or top_k < 1:
            raise ValueError(f"slots, key_dim, value_dim and top_k must be positive, got {slots}, {key_dim}, {value_dim}, {top_k}")
        self.slots = int(slots)
        self.key_dim = int(key_dim)
        self.value_dim = int(value_dim)
        self.top_k = int(top_k)
        self.margin = float(margin)
        self.threshold = float(threshold)
        self.age_noise = float(age_noise)
        self.register_buffer("keys", torch.zeros(slots, key_dim))  # [S, key_dim], unit rows where filled
        self.register_buffer("values", torch.zeros(slots, value_dim))  # [S, value_dim]
        self.register_buffer("ages", torch.zeros(slots, dtype=torch.long))  # [S] update calls since last touch
        self.register_buffer("filled", torch.zeros(slots, dtype=torch.bool))  # [S]

    def extra_repr(self) -> str:
        return (f"slots={self.slots}, key_dim={self.key_dim}, value_dim={self.value_dim}, top_k={self.top_k}, "
                f"margin={self.margin}, threshold={self.threshold}")

    # ------------------------------------------------------------------ helpers
    @property
    def num_filled(self) -> int:
        """How many slots hold an entry."""
        return int(self.filled.sum())

    def _check(self, query: torch.Tensor, value: torch.Tensor | None = None) -> None:
        if query.dim() != 2 or query.shape[1] != self.key_dim:
            raise InputError(f"memory query must be [B, {self.key_dim}], got {tuple(query.shape)}; "
                             "check refiner.memory.key_dim against the key encoder")
        if value is not None and (value.dim() != 2 or value.shape != (query.shape[0], self.value_dim)):
            raise InputError(f"memory value must be [{query.shape[0]}, {self.value_dim}], got {tuple(value.shape)}; "
                             "check refiner.identity_dim against the identity feature")

    def _similarities(self, query: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each (normalised) query to every key, ``-inf`` on empty slots. [B, S]"""
        sims = query @ self.keys.t()
        return sims.masked_fill(~self.filled, float("-inf"))

    def _value_matches(self, stored: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Same-identity test: cosine(stored, value) > threshold; broadcasts over leading dims."""
        return F.cosine_similarity(stored, value, dim=-1) > self.threshold

    def _require_entries(self) -> None:
        if not bool(self.filled.any()):
            raise MissingWeightsError(
                "the refiner's identity memory is empty (no slot written); load a trained refiner "
                "checkpoint (refiner.checkpoint) or pass the identity feature explicitly")

    # ------------------------------------------------------------------ read
    def read(self, query: torch.Tensor, top1: bool = True, temperature: float = 0.05) -> torch.Tensor:
        """Identity features for queries ``[B, key_dim]`` -> ``[B, value_dim]``.

        ``top1=True`` returns the value of the most similar key (the paper). ``top1=False`` mixes
        the values of the ``top_k`` most similar keys with ``softmax(similarity / temperature)``
        weights; the mix keeps the weighted mean norm of the values it mixes.
        """
        self._check(query)
        self._require_entries()
        query = F.normalize(query.to(self.keys.dtype), dim=-1)
        sims = self._similarities(query)  # [B, S]
        if top1:
            return self.values[sims.argmax(dim=1)]
        k = min(self.top_k, self.num_filled)
        top_sims, top_idx = sims.topk(k, dim=1)  # [B, k]
        weights = torch.softmax(top_sims / temperature, dim=1)  # [B, k]
        candidates = self.values[top_idx]  # [B, k, value_dim]
        mix = (weights.unsqueeze(-1) * candidates).sum(dim=1)
        mean_norm = (weights * candidates.norm(dim=-1)).sum(dim=1, keepdim=True)
        return F.normalize(mix, dim=-1) * mean_norm

    # ------------------------------------------------------------------ loss
    def margin_loss(self, query: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Threshold triplet loss of MemoPainter; gradient flows into ``query`` only.

        ``query``: [B, key_dim] (normalised here); ``value``: [B, value_dim] true identity features.
        Returns the mean over the batch of ``relu(sim_neg - sim_pos + margin)``, where items lacking
        a positive or a negative among their top-k filled keys contribute 0.
        """
        self._check(query, value)
        query = F.normalize(query.to(self.keys.dtype), dim=-1)
        n_filled = self.num_filled
        if n_filled == 0:
            return query.sum() * 0.0  # keeps the graph, no signal yet
        k = min(self.top_k, n_filled)
        top_sims, top_idx = self._similarities(query).topk(k, dim=1)  # [B, k]
        matches = self._value_matches(self.values[top_idx], value.detach().to(self.values.dtype).unsqueeze(1))  # [B, k]
        neg_inf = torch.full_like(top_sims, float("-inf"))
        sim_pos = torch.where(matches, top_sims, neg_inf).max(dim=1).values  # [B]
        sim_neg = torch.where(matches, neg_inf, top_sims).max(dim=1).values  # [B]
        valid = matches.any(dim=1) & (~matches).any(dim=1)
        hinge = F.relu(sim_neg - sim_pos + self.margin)
        return torch.where(valid, hinge, torch.zeros_like(hinge)).mean()

    # ------------------------------------------------------------------ update
    def _slot_to_overwrite(self) -> int:
        """Index of the oldest slot; empty slots first (lowest index among them)."""
        priority = self.ages.to(torch.float32)
        if self.age_noise > 0:
            priority = priority + (torch.rand_like(priority) * 2 - 1) * self.age_noise
        priority = priority.masked_fill(~self.filled, float("inf"))
        return int(priority.argmax())

    @torch.no_grad()
    def update(self, query: torch.Tensor, value: torch.Tensor) -> dict[str, int]:
        """Write a batch into the memory (no gradient). Returns ``{"merged": m, "written": w}``.

        Items are processed in order (batches are small), so a later item can merge into a slot
        an earlier one just wrote; the similarity search itself is one matrix-vector product.
        """
        self._check(query, value)
        query = F.normalize(query.detach().to(self.keys.dtype), dim=-1)
        value = value.detach().to(self.values.dtype)
        self.ages += 1
        merged = written = 0
        for q, v in zip(query, value):
            if bool(self.filled.any()):
                nearest = int(self._similarities(q.unsqueeze(0))[0].argmax())
                if bool(self._value_matches(self.values[nearest], v)):
                    self.keys[nearest] = F.normalize(self.keys[nearest] + q, dim=0)
                    self.ages[nearest] = 0
                    merged += 1
                    continue
            slot = self._slot_to_overwrite()
            self.keys[slot] = q
            self.values[slot] = v
            self.ages[slot] = 0
            self.filled[slot] = True
            written += 1
        return {"merged": merged, "written": written}

    @torch.no_grad()
    def reset(self) -> None:
        """Empty the memory."""
        self.keys.zero_()
        self.values.zero_()
        self.ages.zero_()
        self.filled.zero_()


def interpolate_identity(features: torch.Tensor, every: int = 25) -> torch.Tensor:
    """Keep every ``every``-th frame's feature (frames 0, every, 2*every, ... and the last one) and
    interpolate linearly in between (method.md section 7: test-time identity smoothing).

    ``features``: [N, D] per-frame identity features read from the memory -> [N, D].
    """
    if features.dim() != 2:
        raise InputError(f"identity features must be [N, D], got {tuple(features.shape)}")
    if every < 1:
        raise InputError(f"identity interpolation step must be >= 1, got {every}; set refiner.identity_every")
    n = features.shape[0]
    if n <= 1:
        return features.clone()
    frame = torch.arange(n, device=features.device)
    left = (frame // every) * every  # [N] keyframe at or before each frame
    right = torch.clamp(left + every, max=n - 1)  # [N] next keyframe (the last frame closes the tail)
    span = (right - left).clamp(min=1)
    weight = ((frame - left).to(features.dtype) / span.to(features.dtype)).unsqueeze(1)  # [N, 1]
    return torch.lerp(features[left], features[right], weight)
