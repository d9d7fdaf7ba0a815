"""The linear 3D morphable face model: coefficients -> posed, shaded mesh and 2-D landmarks.

A :class:`MorphableModel` holds the buffers of a BFM-like model (the converted Basel Face
Model 2009 of :mod:`talkinghead.face.bfm`, or the procedural face of
:mod:`talkinghead.face.procedural`) and turns a ``[B, 257]`` coefficient vector (layout:
:mod:`talkinghead.face.coeffs`) into a :class:`FaceGeometry`:

1. shape  = mean_shape + id_basis @ identity + exp_basis @ expression     (model space)
2. albedo = clamp(mean_albedo + tex_basis @ texture, 0, 1)
3. pose   = shape @ R(angles) + translation                             (world space)
4. colour = albedo x SH irradiance of the rotated vertex normals          (shading.py)
5. landmarks = camera projection of the 68 landmark vertices (iBUG order)

Bases come in (and are saved) in Deng et al.'s layout: ``[N*3, K]`` with vertex-major rows
(x0, y0, z0, x1, ...), already multiplied by their standard deviations, so a coefficient of 1
is one standard deviation. Internally they are stored coordinate-major and every per-vertex
quantity is computed as ``[3, N, B]`` planes (coordinate, vertex, batch); the ``[B, N, 3]``
tensors the model returns are views of those planes (``permute(2, 1, 0)``), which the
renderer reads without a copy. Call ``.contiguous()`` before ``.view`` on them. Triangles are counter-clockwise seen from the
camera for front-facing triangles, so face normals point toward the viewer (+z).

Saved as one ``.safetensors`` file (buffers + metadata: format, version, name, ...).
"""

from __future__ import annotations

import functools
import json
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from talkinghead.errors import InputError
from talkinghead.face.camera import Camera, pose_planes, pose_vertices
from talkinghead.face.coeffs import EXP_DIM, ID_DIM, TEX_DIM, split_coeffs
from talkinghead.face.planar import gather_rows
from talkinghead.face.shading import irradiance_planes

#: Value of the ``format`` metadata key of a saved model file.
FILE_FORMAT = "talkinghead-face-model"
#: Version of the saved-model layout; bump when buffers change meaning.
FILE_VERSION = "1"

NUM_LANDMARKS = 68
#: Landmarks of the 5-point alignment, as groups averaged per point (iBUG 68 indices):
#: left eye centre (36-41), right eye centre (42-47), nose tip (30), mouth corners (48, 54).
FIVE_POINT_INDICES: tuple[tuple[int, ...], ...] = (
    tuple(range(36, 42)),
    tuple(range(42, 48)),
    (30,),
    (48,),
    (54,),
)

_REQUIRED_BUFFERS = ("mean_shape", "id_basis", "exp_basis", "mean_albedo", "tex_basis", "triangles", "landmark_indices")


def five_points(landmarks68: torch.Tensor) -> torch.Tensor:
    """68 landmarks ``[..., 68, D]`` -> the 5 alignment points ``[..., 5, D]``: eye centres
    (means of 36-41 and 42-47), nose tip 30, mouth corners 48 and 54. Works on numpy too."""
    if landmarks68.shape[-2] != NUM_LANDMARKS:
        raise ValueError(f"expected 68 landmarks on axis -2, got shape {tuple(landmarks68.shape)}")
    if isinstance(landmarks68, np.ndarray):
        return np.stack([landmarks68[..., list(g), :].mean(-2) for g in FIVE_POINT_INDICES], axis=-2)
    return torch.stack([landmarks68[..., list(g), :].mean(-2) for g in FIVE_POINT_INDICES], dim=-2)


@dataclass
class FaceGeometry:
    """Output of :meth:`MorphableModel.forward` for a batch of B faces with N vertices."""

    vertices: torch.Tensor  # [B, N, 3] world space (posed)
    normals: torch.Tensor  # [B, N, 3] world-space unit vertex normals
    colours: torch.Tensor  # [B, N, 3] shaded vertex colours
    albedo: torch.Tensor  # [B, N, 3] unshaded albedo in [0, 1]
    landmarks: torch.Tensor  # [B, 68, 2] pixel coordinates (u right, v down)
    depth: torch.Tensor  # [B, 68] camera depth of the landmark vertices


#: Per model, its derived caches (packed bases, vertex-face incidence): kept outside the module,
#: as oneDNN-packed and sparse CSR tensors can be neither deep-copied nor pickled.
_DERIVED: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


@functools.lru_cache(maxsize=1)
def _onednn_linear_available() -> bool:
    """Whether this torch build has the oneDNN linear ops :meth:`MorphableModel._basis_product`
    uses on CPU (internal ops, which inductor's freezing pass uses too, so they are checked
    with a tiny product before use)."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        weight, x = torch.arange(6.0).view(3, 2), torch.tensor([[1.0, -1.0]])
        packed = torch.ops.mkldnn._reorder_linear_weight(weight)
        out = torch.ops.mkldnn._linear_pointwise(x, packed, torch.ones(3), "none", [], "")
        return bool(torch.allclose(out, x @ weight.T + 1.0))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def _coordinate_major(basis: torch.Tensor) -> torch.Tensor:
    """``[N*3, K]`` basis with vertex-major rows (x0, y0, z0, x1, ...) -> ``[3N, K]`` with
    coordinate-major rows (x0, x1, ..., y0, ..., z0, ...)."""
    return basis.view(-1, 3, basis.shape[-1]).transpose(0, 1).reshape(-1, basis.shape[-1]).contiguous()


def _vertex_major(basis: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_coordinate_major`."""
    return basis.view(3, -1, basis.shape[-1]).transpose(0, 1).reshape(-1, basis.shape[-1]).contiguous()


def _as_tensor(value: Any, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to(dtype=dtype).clone()
    return torch.as_tensor(np.asarray(value), dtype=dtype).clone()


class MorphableModel(torch.nn.Module):
    """Linear 3DMM with BFM-in-Deng dimensions (identity 80, expression 64, texture 80).

    Args:
        mean_shape: ``[N, 3]`` mean vertex positions (model units, centred near the origin).
        id_basis: ``[N*3, 80]`` identity basis, pre-multiplied by its standard deviations.
        exp_basis: ``[N*3, 64]`` expression basis, pre-multiplied by its standard deviations.
        mean_albedo: ``[N, 3]`` mean albedo in [0, 1].
        tex_basis: ``[N*3, 80]`` albedo basis (albedo units), pre-multiplied.
        triangles: ``[F, 3]`` vertex indices, counter-clockwise seen from the camera.
        landmark_indices: ``[68]`` vertex index of each iBUG-68 landmark.
        skin_mask: ``[N]`` bool, vertices used by photometric losses (default: all).
        mouth_indices: optional ``[M]`` vertices of the lips region.
        name: short model name stored in the saved file.
        metadata: extra JSON-serialisable information stored in the saved file.
    """

    def __init__(
        self,
        mean_shape,
        id_basis,
        exp_basis,
        mean_albedo,
        tex_basis,
        triangles,
        landmark_indices,
        skin_mask=None,
        mouth_indices=None,
        name: str = "face-model",
        metadata: dict[str, Any] | None = None,
    ):
        super().__init__()
        mean_shape = _as_tensor(mean_shape, torch.float32).reshape(-1, 3)
        n = mean_shape.shape[0]
        buffers = {
            "mean_shape": mean_shape,
            "id_basis": _as_tensor(id_basis, torch.float32),
            "exp_basis": _as_tensor(exp_basis, torch.float32),
            "mean_albedo": _as_tensor(mean_albedo, torch.float32).reshape(-1, 3),
            "tex_basis": _as_tensor(tex_basis, torch.float32),
            "triangles": _as_tensor(triangles, torch.long),
            "landmark_indices": _as_tensor(landmark_indices, torch.long).reshape(-1),
            "skin_mask": (
                torch.ones(n, dtype=torch.bool) if skin_mask is None else _as_tensor(skin_mask, torch.bool).reshape(-1)
            ),
        }
        expected = {
            "id_basis": (n * 3, ID_DIM),
            "exp_basis": (n * 3, EXP_DIM),
            "mean_albedo": (n, 3),
            "tex_basis": (n * 3, TEX_DIM),
            "landmark_indices": (NUM_LANDMARKS,),
            "skin_mask": (n,),
        }
        for key, shape in expected.items():
            if tuple(buffers[key].shape) != shape:
                raise ValueError(f"face model buffer {key!r} has shape {tuple(buffers[key].shape)}, expected {shape}")
        tri = buffers["triangles"]
        if tri.ndim != 2 or tri.shape[1] != 3 or tri.numel() == 0:
            raise ValueError(f"face model buffer 'triangles' must be [F, 3], got {tuple(tri.shape)}")
        for key in ("triangles", "landmark_indices"):
            idx = buffers[key]
            if int(idx.min()) < 0 or int(idx.max()) >= n:
                raise ValueError(f"face model buffer {key!r} indexes outside the {n} vertices")
        # Computation runs in a planar layout: per-vertex tensors are [3, N, B] (coordinate,
        # vertex, batch). The bases are stored with coordinate-major rows (x of every vertex,
        # then y, then z), so ``basis @ coeffs.T`` is already [3N, B]; gathering a triangle's
        # corners then copies B contiguous values per corner, and per-batch pose and lighting
        # are multiply-adds along the batch axis. The [B, N, 3] tensors the methods return
        # are views of these planes. Identity and expression bases live in one [3N, 80 + 64]
        # matrix, so that the shape is one product. ``id_basis``/``exp_basis``/``tex_basis``
        # give the usual vertex-major [N*3, K] matrices (copies) and are what ``save`` writes.
        shape_basis = torch.cat([buffers.pop("id_basis"), buffers.pop("exp_basis")], 1)  # [N*3, 144] vertex-major
        self.register_buffer("shape_basis_planar", _coordinate_major(shape_basis))
        self.register_buffer("tex_basis_planar", _coordinate_major(buffers.pop("tex_basis")))
        for key, value in buffers.items():
            self.register_buffer(key, value)
        self.register_buffer(
            "mouth_indices", None if mouth_indices is None else _as_tensor(mouth_indices, torch.long).reshape(-1)
        )
        self.name = str(name)
        self.metadata: dict[str, Any] = dict(metadata or {})

        # Precomputed, not saved: the means in the planar layout, the landmark rows of the shape
        # basis (cheap landmark path) and the triangle corners used to accumulate face normals.
        lm = buffers["landmark_indices"]
        rows = (lm[:, None] * 3 + torch.arange(3)).reshape(-1)  # [68*3]
        self.register_buffer("_mean_shape_planar", mean_shape.T.reshape(-1).contiguous(), persistent=False)  # [3N]
        self.register_buffer("_mean_albedo_planar", buffers["mean_albedo"].T.reshape(-1).contiguous(), persistent=False)
        self.register_buffer("_lm_mean_shape", mean_shape[lm], persistent=False)  # [68, 3]
        self.register_buffer("_lm_shape_basis", shape_basis[rows], persistent=False)  # [204, 144]
        self.register_buffer("_corner_ids", tri.T.reshape(-1).contiguous(), persistent=False)  # [3F]: corner-major

    # ----------------------------------------------------------------------------- sizes
    @property
    def num_vertices(self) -> int:
        return int(self.mean_shape.shape[0])

    @property
    def num_triangles(self) -> int:
        return int(self.triangles.shape[0])

    @property
    def id_basis(self) -> torch.Tensor:
        """``[N*3, 80]`` identity basis, vertex-major rows (a copy of the planar storage)."""
        return _vertex_major(self.shape_basis_planar[:, :ID_DIM])

    @property
    def exp_basis(self) -> torch.Tensor:
        """``[N*3, 64]`` expression basis, vertex-major rows (a copy of the planar storage)."""
        return _vertex_major(self.shape_basis_planar[:, ID_DIM:])

    @property
    def tex_basis(self) -> torch.Tensor:
        """``[N*3, 80]`` albedo basis, vertex-major rows (a copy of the planar storage)."""
        return _vertex_major(self.tex_basis_planar)

    # ------------------------------------------------------------------------ components
    def shape_planes(self, identity: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        """Model-space vertices ``[3, N, B]`` (planar) from identity ``[B, 80]`` and expression ``[B, 64]``."""
        basis = self.shape_basis_planar
        person = self._one_person_term("identity", identity, basis[:, :ID_DIM], self._mean_shape_planar)
        if person is not None:  # one person's neutral face (cached): only the expression product per frame
            planes = self._basis_product("expression", basis[:, ID_DIM:], person, expression.to(person.dtype))
        else:
            shape_coeffs = torch.cat([identity, expression.to(identity.dtype)], -1)  # [B, 144]
            planes = self._basis_product("shape", basis, self._mean_shape_planar, shape_coeffs)  # [3N, B]
        return planes.view(3, self.num_vertices, -1)

    def shape(self, identity: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        """Model-space vertices ``[B, N, 3]`` (a view of :meth:`shape_planes`)."""
        return self.shape_planes(identity, expression).permute(2, 1, 0)

    def albedo_planes(self, texture: torch.Tensor) -> torch.Tensor:
        """Albedo ``[3, N, B]`` (planar) in [0, 1] from texture coefficients ``[B, 80]``."""
        person = self._one_person_term("texture", texture, self.tex_basis_planar, self._mean_albedo_planar)
        if person is not None:  # one person's albedo (cached), the same for every frame
            return person.clamp(0.0, 1.0).view(3, -1, 1).expand(-1, -1, texture.shape[0])
        planes = self._basis_product("texture", self.tex_basis_planar, self._mean_albedo_planar, texture)  # [3N, B]
        return planes.clamp(0.0, 1.0).view(3, self.num_vertices, -1)

    def albedo(self, texture: torch.Tensor) -> torch.Tensor:
        """Albedo ``[B, N, 3]`` in [0, 1] (a view of :meth:`albedo_planes`)."""
        return self.albedo_planes(texture).permute(2, 1, 0)

    def _basis_product(self, name: str, basis: torch.Tensor, offset: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
        """``offset[:, None] + basis @ coeffs.T``: basis ``[3N, K]``, offset ``[3N]``, coeffs
        ``[B, K]`` -> contiguous ``[3N, B]``.

        Without autograd on a CPU float32 tensor, this runs as a oneDNN linear layer with the
        basis packed once into oneDNN's blocked layout (cached per basis); on the 2-core AMD VM
        that is 4-5 ms for the 106k x 144 shape basis at B = 8, against 12-13 ms for
        ``torch.addmm``, whose skinny-matrix kernel is slow there. Everywhere else (gradients,
        GPU, other dtypes, a torch build without these oneDNN ops) it is ``torch.addmm``."""
        if _onednn_linear_available() and coeffs.device.type == "cpu" and coeffs.dtype == basis.dtype == torch.float32 and not (
            torch.is_grad_enabled() and (coeffs.requires_grad or basis.requires_grad or offset.requires_grad)
        ):
            key = (basis.data_ptr(), basis.shape, basis.stride(), basis._version)
            cache = _DERIVED.setdefault(self, {}).setdefault("packed", {})
            if cache.get(name, (None,))[0] != key:
                cache[name] = (key, torch.ops.mkldnn._reorder_linear_weight(basis.contiguous()))
            out = torch.ops.mkldnn._linear_pointwise(coeffs.contiguous(), cache[name][1], offset.contiguous(), "none", [], "")
            return torch.stack(out.unbind(0), 1)  # [B, 3N] -> [3N, B] (faster than out.T.contiguous() on CPU)
        return torch.addmm(offset[:, None], basis, coeffs.T)

    def _one_person_term(self, name: str, coeffs: torch.Tensor, basis: torch.Tensor, offset: torch.Tensor):
        """``offset + basis @ coeffs[0]`` (``[3N]``) when every row of ``coeffs [B, K]`` is the
        same and no gradient is needed, else ``None``. Rendering a person frame after frame
        repeats that person's identity and texture; the product is cached for the last
        coefficient vector, so each frame reads only the expression basis (the basis products
        dominate the face model's time). Exact: the same sums, grouped differently (float
        rounding aside)."""
        if coeffs.dim() != 2 or (torch.is_grad_enabled() and coeffs.requires_grad):
            return None
        first = coeffs[:1]
        if coeffs.shape[0] > 1 and not torch.equal(coeffs, first.expand_as(coeffs)):
            return None
        key = (basis.data_ptr(), basis._version, offset.data_ptr(), offset._version, coeffs.dtype, coeffs.device)
        cache = self.__dict__.setdefault("_one_person_cache", {})
        hit = cache.get(name)
        if hit is not None and hit[0] == key and torch.equal(hit[1], first):
            return hit[2]
        with torch.no_grad():
            value = F.linear(first, basis.to(coeffs.dtype), offset.to(coeffs.dtype))[0]
        cache[name] = (key, first.clone(), value)
        return value

    def _vertex_face_incidence(self, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Sparse CSR ``[N, F]`` with a 1 where vertex n is a corner of triangle f (cached per
        device; not a buffer, so it is never saved)."""
        cache = _DERIVED.setdefault(self, {}).setdefault("incidence", {})
        if (device, dtype) not in cache:
            tri = self.triangles.to(device)
            rows = tri.reshape(-1)
            cols = torch.arange(tri.shape[0], device=device).repeat_interleave(3)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "sparse CSR is beta"
                cache[device, dtype] = torch.sparse_coo_tensor(
                    torch.stack([rows, cols]), torch.ones(rows.numel(), device=device, dtype=dtype),
                    (self.num_vertices, tri.shape[0]),
                ).coalesce().to_sparse_csr()
        return cache[device, dtype]

    def vertex_normals_planes(self, planes: torch.Tensor) -> torch.Tensor:
        """Unit vertex normals ``[3, N, B]`` of planar vertices ``[3, N, B]``: area-weighted sum of
        the adjacent face normals.

        Each coordinate plane ``[N, B]`` gives its triangle corners by one row gather; the sum
        over adjacent faces is a sparse ``[N, F] @ [F, B]`` product per coordinate (about 4x
        faster than ``index_add_`` on CPU, and differentiable)."""
        n_triangles = self.num_triangles
        x, y, z = (gather_rows(plane, self._corner_ids).view(3, n_triangles, -1) for plane in planes.unbind(0))
        ex, ey, ez = x[1] - x[0], y[1] - y[0], z[1] - z[0]  # [F, B] edge p1 - p0
        fx, fy, fz = x[2] - x[0], y[2] - y[0], z[2] - z[0]  # edge p2 - p0
        incidence = self._vertex_face_incidence(planes.device, planes.dtype)
        # Face normals (|.| = 2 x area), summed over each vertex's faces: [N, B] per coordinate.
        sx = incidence @ torch.addcmul(ey * fz, ez, fy, value=-1)
        sy = incidence @ torch.addcmul(ez * fx, ex, fz, value=-1)
        sz = incidence @ torch.addcmul(ex * fy, ey, fx, value=-1)
        # x / max(|x|, 1e-12), as F.normalize
        inv_norm = (sx * sx).addcmul_(sy, sy).addcmul_(sz, sz).clamp_min(1e-24).rsqrt()  # [N, B]
        return torch.stack([sx * inv_norm, sy * inv_norm, sz * inv_norm])

    def vertex_normals(self, vertices: torch.Tensor) -> torch.Tensor:
        """Unit vertex normals ``[B, N, 3]`` of vertices ``[B, N, 3]`` (any memory layout; a view
        of :meth:`vertex_normals_planes`)."""
        return self.vertex_normals_planes(vertices.permute(2, 1, 0).contiguous()).permute(2, 1, 0)

    # --------------------------------------------------------------------------- forward
    def forward(self, coeffs: torch.Tensor, camera: Camera | None = None) -> FaceGeometry:
        """Coefficients ``[B, 257]`` -> posed, shaded :class:`FaceGeometry` seen by ``camera``
        (default: the 224 crop camera of method.md)."""
        camera = camera or Camera()
        c = split_coeffs(coeffs)
        vertices = pose_planes(self.shape_planes(c.identity, c.expression), c.angles, c.translation)  # [3, N, B]
        normals = self.vertex_normals_planes(vertices)
        albedo = self.albedo_planes(c.texture)
        colours = albedo * irradiance_planes(normals, c.lighting)
        vertices, normals, colours, albedo = (x.permute(2, 1, 0) for x in (vertices, normals, colours, albedo))
        landmarks, depth = camera.project(vertices[:, self.landmark_indices])
        return FaceGeometry(vertices, normals, colours, albedo, landmarks, depth)

    def landmark_vertices(self, identity: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        """Model-space positions ``[B, 68, 3]`` of the landmark vertices only (cheap)."""
        shape_coeffs = torch.cat([identity, expression.to(identity.dtype)], -1)  # [B, 144]
        return F.linear(shape_coeffs, self._lm_shape_basis, self._lm_mean_shape.reshape(-1)).unflatten(-1, (NUM_LANDMARKS, 3))

    def landmarks_2d(self, coeffs: torch.Tensor, camera: Camera | None = None) -> torch.Tensor:
        """Projected landmarks ``[B, 68, 2]`` computed from the 68 landmark vertices only (the
        same values as ``forward(coeffs, camera).landmarks``; use it inside fitting loops)."""
        camera = camera or Camera()
        c = split_coeffs(coeffs)
        posed = pose_vertices(self.landmark_vertices(c.identity, c.expression), c.angles, c.translation)
        return camera.project(posed)[0]

    # ------------------------------------------------------------------------------- I/O
    def save(self, path: str | Path) -> Path:
        """Write the buffers and metadata to a ``.safetensors`` file; returns its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {key: getattr(self, key).detach().cpu().contiguous() for key in (*_REQUIRED_BUFFERS, "skin_mask")}
        if self.mouth_indices is not None:
            tensors["mouth_indices"] = self.mouth_indices.detach().cpu().contiguous()
        header = {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "name": self.name,
            "metadata": json.dumps(self.metadata),
        }
        save_file(tensors, str(path), metadata=header)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "MorphableModel":
        """Read a model written by :meth:`save`; bad or missing files raise :class:`InputError`."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise InputError(f"face model file not found: {path}; give the path of a saved .safetensors face model")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                tensors = {key: f.get_tensor(key) for key in f.keys()}
        except Exception as err:  # safetensors raises several types for corrupt files
            raise InputError(
                f"face model file {path} is not a readable .safetensors file ({err}); re-create it"
            ) from err
        if header.get("format") != FILE_FORMAT:
            raise InputError(f"{path} is not a talkinghead face model (format {header.get('format')!r}); re-create it")
        if header.get("version") != FILE_VERSION:
            raise InputError(
                f"face model {path} has version {header.get('version')!r}, this code reads "
                f"{FILE_VERSION!r}; re-create it"
            )
        missing = [key for key in _REQUIRED_BUFFERS if key not in tensors]
        if missing:
            raise InputError(f"face model {path} lacks buffers {missing}; re-create it")
        try:
            return cls(
                **{key: tensors[key] for key in _REQUIRED_BUFFERS},
                skin_mask=tensors.get("skin_mask"),
                mouth_indices=tensors.get("mouth_indices"),
                name=header.get("name", path.stem),
                metadata=json.loads(header.get("metadata") or "{}"),
            )
        except ValueError as err:
            raise InputError(f"face model {path} is inconsistent ({err}); re-create it") from err

    def extra_repr(self) -> str:
        return f"name={self.name!r}, vertices={self.num_vertices}, triangles={self.num_triangles}"
