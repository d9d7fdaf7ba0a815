"""Basel Face Model 2009 converter and loader (the 3DMM the paper used).

The paper's face model is Deng et al.'s (2019) 35,709-vertex front-face crop of the Basel
Face Model 2009 with Guo et al.'s expression basis. None of its files may be redistributed,
so users download them once and :func:`convert_bfm09` turns them into the project's own
``.safetensors`` format (:class:`~talkinghead.face.morphable.MorphableModel`), doing what
Deng et al.'s ``transferBFM09`` does:

* identity basis  = first 80 of ``shapePC * shapeEV``, / 1e5 (decimetre-like units);
* expression basis = first 64 of Guo et al.'s ``Exp_Pca.bin`` basis times ``std_exp.txt``,
  / 1e5;
* texture basis   = first 80 of ``texPC * texEV`` (and the mean texture), / 255 here so
  albedo is in [0, 1];
* vertices: ``BFM_exp_idx.mat`` (``trimIndex``: BFM vertex of each of the 53,215
  expression-model vertices) composed with ``BFM_front_idx.mat`` (``idx``: the 35,709
  front-face vertices among those), both 1-based;
* triangles, 68 landmark vertices and the skin mask from ``facemodel_info.mat``;
* the mean shape is recentred on its centroid (Deng's model loader does this).

Where the files come from (put all six in one folder, e.g. ``data/bfm/``):

* ``01_MorphableModel.mat``: Basel Face Model 2009, https://faces.dmi.unibas.ch/bfm/ (free
  after registration; in ``PublicMM1/``).
* ``Exp_Pca.bin``: Guo et al.'s expression basis, 3DFace repository (``CoarseData``).
* ``std_exp.txt``, ``BFM_front_idx.mat``, ``BFM_exp_idx.mat``, ``facemodel_info.mat``: the
  ``BFM/`` folder of Deng et al.'s Deep3DFaceReconstruction repository.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.io import loadmat

from talkinghead.errors import InputError, MissingWeightsError
from talkinghead.face.coeffs import EXP_DIM, ID_DIM, TEX_DIM
from talkinghead.face.morphable import MorphableModel

BFM_URL = "https://faces.dmi.unibas.ch/bfm/"
_DENG = "Deng et al.'s Deep3DFaceReconstruction repository (BFM/ folder)"
#: The files :func:`convert_bfm09` needs, and where users obtain each.
BFM_FILES: dict[str, str] = {
    "01_MorphableModel.mat": f"Basel Face Model 2009, {BFM_URL} after registration (PublicMM1/)",
    "Exp_Pca.bin": "Guo et al.'s 3DFace repository (CoarseData/)",
    "std_exp.txt": _DENG,
    "BFM_front_idx.mat": _DENG,
    "BFM_exp_idx.mat": _DENG,
    "facemodel_info.mat": _DENG,
}
#: Shape units in the BFM files are micrometres-like; Deng divides by 1e5.
SHAPE_SCALE = 1e-5
#: BFM colours are 0..255; albedo here is 0..1.
TEXTURE_SCALE = 1.0 / 255.0
MODEL_NAME = "bfm09-front"


def missing_bfm_files(src_dir: str | Path) -> list[str]:
    """Names of the :data:`BFM_FILES` absent from ``src_dir``."""
    src = Path(src_dir).expanduser()
    return [name for name in BFM_FILES if not (src / name).is_file()]


def _raise_missing(src: Path, missing: list[str]) -> None:
    # group the missing files by where they come from, so the line stays readable
    sources: dict[str, list[str]] = {}
    for name in missing:
        sources.setdefault(BFM_FILES[name], []).append(name)
    parts = "; ".join(f"{', '.join(names)} from {where}" for where, names in sources.items())
    raise MissingWeightsError(
        f"Basel Face Model files missing in {src}: {parts}. They cannot be redistributed: "
        f"download them, put them in {src} and run the conversion again"
    )


def _loadmat(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    try:
        data = loadmat(str(path))
    except NotImplementedError as err:  # MATLAB v7.3 (HDF5) files
        raise InputError(f"{path} is a MATLAB v7.3 file; re-save it with -v7 or use the original download") from err
    except Exception as err:
        raise InputError(f"cannot read {path} ({err}); download it again") from err
    absent = [key for key in keys if key not in data]
    if absent:
        raise InputError(f"{path} lacks the variables {absent}; is it the right file? download it again")
    return {key: np.asarray(data[key]) for key in keys}


def _need_columns(array: np.ndarray, count: int, what: str, path: Path) -> None:
    if array.shape[-1] < count:
        raise InputError(f"{path}: {what} has {array.shape[-1]} components, need at least {count}; download it again")


def _read_expression_basis(path: Path, vertices: int) -> np.ndarray:
    """Guo et al.'s ``Exp_Pca.bin``: int32 component count K, float32 mean (3V), float32
    basis (K rows of 3V) -> basis ``[3V, K]``."""
    with open(path, "rb") as f:
        header = np.fromfile(f, dtype=np.int32, count=1)
        values = np.fromfile(f, dtype=np.float32)
    if header.size != 1 or header[0] <= 0:
        raise InputError(f"{path} has no valid component count; download it again")
    count = int(header[0])
    expected = 3 * vertices * (1 + count)
    if values.size < expected:
        raise InputError(
            f"{path} holds {values.size} floats, expected {expected} for {count} components of {vertices} vertices "
            "(as BFM_exp_idx.mat says); download it again"
        )
    basis = values[3 * vertices:expected].reshape(count, 3 * vertices)  # skip the mean
    return basis.T  # [3V, K]


def _index(array: np.ndarray, size: int, what: str, path: Path) -> np.ndarray:
    """1-based MATLAB indices -> 0-based int64, range-checked."""
    idx = np.asarray(array).astype(np.int64).reshape(-1) - 1
    if idx.size == 0 or idx.min() < 0 or idx.max() >= size:
        raise InputError(f"{path}: {what} indexes outside 1..{size}; download it again")
    return idx


def _select_rows(basis: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Rows of the vertex-major ``[3V, K]`` basis for the given vertices -> ``[3n, K]``."""
    return basis.reshape(-1, 3, basis.shape[-1])[vertices].reshape(-1, basis.shape[-1])


def _orient_triangles(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Flip the winding if the area-weighted normals point away from the camera (-z)."""
    a, b, c = vertices[triangles[:, 0]], vertices[triangles[:, 1]], vertices[triangles[:, 2]]
    if np.cross(b - a, c - a)[:, 2].sum() < 0:
        return triangles[:, [0, 2, 1]]
    return triangles


def _inside_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd test of ``points [N, 2]`` against a closed ``polygon [M, 2]`` -> ``[N]`` bool."""
    x, y = points[:, 0:1], points[:, 1:2]  # [N, 1]
    x0, y0 = polygon[:, 0], polygon[:, 1]  # [M]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    straddles = (y0 > y) != (y1 > y)  # [N, M]
    with np.errstate(divide="ignore", invalid="ignore"):
        cross_x = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return (straddles & (x < cross_x)).sum(1) % 2 == 1


def convert_bfm09(src_dir: str | Path, out_path: str | Path) -> Path:
    """Convert the downloaded BFM 2009 files in ``src_dir`` (see :data:`BFM_FILES`) into a
    :class:`MorphableModel` saved at ``out_path`` (``.safetensors``); returns ``out_path``.

    Raises :class:`MissingWeightsError` naming every missing file and where to get it."""
    src = Path(src_dir).expanduser()
    missing = missing_bfm_files(src)
    if missing:
        _raise_missing(src, missing)

    bfm_path = src / "01_MorphableModel.mat"
    bfm = _loadmat(bfm_path, ("shapeMU", "shapePC", "shapeEV", "texMU", "texPC", "texEV"))
    shape_ev = bfm["shapeEV"].reshape(-1)
    tex_ev = bfm["texEV"].reshape(-1)
    _need_columns(bfm["shapePC"], ID_DIM, "shapePC", bfm_path)
    _need_columns(bfm["texPC"], TEX_DIM, "texPC", bfm_path)
    bfm_vertices = bfm["shapeMU"].size // 3

    # vertex selection: BFM vertex of each expression-model vertex, then the front face
    exp_idx_path = src / "BFM_exp_idx.mat"
    trim = _index(_loadmat(exp_idx_path, ("trimIndex",))["trimIndex"], bfm_vertices, "trimIndex", exp_idx_path)
    front_path = src / "BFM_front_idx.mat"
    front = _index(_loadmat(front_path, ("idx",))["idx"], trim.size, "idx", front_path)
    shape_vertices = trim[front]  # [N] into the BFM vertices

    exp_path = src / "Exp_Pca.bin"
    exp_pc = _read_expression_basis(exp_path, trim.size)  # [3 * 53215, 79]
    _need_columns(exp_pc, EXP_DIM, "the expression basis", exp_path)
    std_path = src / "std_exp.txt"
    try:
        exp_std = np.loadtxt(std_path).reshape(-1)
    except ValueError as err:
        raise InputError(f"cannot read {std_path} ({err}); download it again") from err
    if exp_std.size < EXP_DIM:
        raise InputError(f"{std_path} has {exp_std.size} values, need at least {EXP_DIM}; download it again")

    id_basis = bfm["shapePC"][:, :ID_DIM] * shape_ev[:ID_DIM].astype(np.float64) * SHAPE_SCALE
    exp_basis = exp_pc[:, :EXP_DIM] * exp_std[:EXP_DIM] * SHAPE_SCALE
    tex_basis = bfm["texPC"][:, :TEX_DIM] * tex_ev[:TEX_DIM].astype(np.float64) * TEXTURE_SCALE
    id_basis = _select_rows(id_basis, shape_vertices)
    tex_basis = _select_rows(tex_basis, shape_vertices)
    exp_basis = _select_rows(exp_basis, front)
    mean_shape = bfm["shapeMU"].reshape(-1, 3)[shape_vertices].astype(np.float64) * SHAPE_SCALE
    mean_shape -= mean_shape.mean(0, keepdims=True)
    mean_albedo = bfm["texMU"].reshape(-1, 3)[shape_vertices].astype(np.float64) * TEXTURE_SCALE

    info_path = src / "facemodel_info.mat"
    info = _loadmat(info_path, ("tri", "keypoints", "skinmask"))
    count = shape_vertices.size
    triangles = _index(info["tri"], count, "tri", info_path).reshape(-1, 3)
    keypoints = _index(info["keypoints"], count, "keypoints", info_path)
    if keypoints.size != 68:
        raise InputError(f"{info_path}: keypoints has {keypoints.size} entries, expected 68; download it again")
    skin = np.asarray(info["skinmask"]).reshape(-1)
    if skin.size != count:
        raise InputError(f"{info_path}: skinmask has {skin.size} entries, expected {count}; download it again")
    triangles = _orient_triangles(mean_shape, triangles)
    mouth = np.nonzero(_inside_polygon(mean_shape[:, :2], mean_shape[keypoints[48:60], :2]))[0]

    model = MorphableModel(
        mean_shape=mean_shape,
        id_basis=id_basis,
        exp_basis=exp_basis,
        mean_albedo=mean_albedo,
        tex_basis=tex_basis,
        triangles=triangles,
        landmark_indices=keypoints,
        skin_mask=skin != 0,
        mouth_indices=mouth,
        name=MODEL_NAME,
        metadata={
            "source": "Basel Face Model 2009 + Guo et al. expression basis, Deng et al. front-face crop",
            "converted_from": str(src),
        },
    )
    return model.save(out_path)


def load_face_model(path: str | Path, bfm_dir: str | Path | None = None) -> MorphableModel:
    """Load a converted face model (``.safetensors``). If it does not exist and ``bfm_dir``
    is given, convert the BFM files found there first; otherwise raise
    :class:`MissingWeightsError` saying how to create it."""
    path = Path(path).expanduser()
    if not path.is_file():
        if bfm_dir is None:
            raise MissingWeightsError(
                f"converted face model not found: {path}; create it once with "
                f"talkinghead.face.bfm.convert_bfm09(BFM_DIR, '{path}') from the Basel Face Model files "
                f"({', '.join(BFM_FILES)}), or use the procedural face model"
            )
        convert_bfm09(bfm_dir, path)
    return MorphableModel.load(path)
