"""Face model: coefficient layout, camera, SH shading, MorphableModel, procedural face, BFM09
converter."""

from __future__ import annotations

import copy
import io

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from talkinghead.errors import ConfigError, InputError, MissingWeightsError
from talkinghead.face.bfm import BFM_FILES, BFM_URL, convert_bfm09, load_face_model
from talkinghead.face.camera import Camera, euler_to_rotation, pose_vertices, rotation_to_euler
from talkinghead.face.coeffs import COEFF_DIM, SH_DC_INIT, SLICES, neutral_coeffs, split_coeffs
from talkinghead.face.morphable import FIVE_POINT_INDICES, MorphableModel, five_points
from talkinghead.face.procedural import EXPRESSION_UNITS, make_procedural_model
from talkinghead.face.shading import SH_A, SH_C, irradiance, lighting_matrix, sh_basis, shade


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def face() -> MorphableModel:
    return make_procedural_model(seed=0)


def _coeffs(batch: int = 1, **units: float) -> torch.Tensor:
    c = neutral_coeffs(batch)
    for name, value in units.items():
        c[:, SLICES["expression"].start + EXPRESSION_UNITS[name]] = value
    return c


def _landmarks(face: MorphableModel, **units: float) -> torch.Tensor:
    return face.landmarks_2d(_coeffs(**units))[0]  # [68, 2]


def _plane_model(n: int = 6) -> MorphableModel:
    """A flat n x n grid in the z = 0 plane, triangles counter-clockwise seen from +z."""
    xs, ys = np.meshgrid(np.linspace(-0.5, 0.5, n), np.linspace(-0.5, 0.5, n))
    verts = np.stack([xs.ravel(), ys.ravel(), np.zeros(n * n)], -1)
    tris = []
    for i in range(n - 1):
        for j in range(n - 1):
            a, b, c, d = i * n + j, i * n + j + 1, (i + 1) * n + j, (i + 1) * n + j + 1
            tris += [[a, b, d], [a, d, c]]
    nv = n * n
    rng = np.random.default_rng(0)
    return MorphableModel(
        mean_shape=verts,
        id_basis=rng.normal(size=(nv * 3, 80)) * 1e-3,
        exp_basis=np.zeros((nv * 3, 64)),
        mean_albedo=np.full((nv, 3), 0.5),
        tex_basis=np.zeros((nv * 3, 80)),
        triangles=np.array(tris),
        landmark_indices=np.arange(68) % nv,
    )


# ----------------------------------------------------------------- layout and camera
def test_coefficient_layout_matches_method():
    assert COEFF_DIM == 257
    expected = {
        "identity": (0, 80),
        "expression": (80, 144),
        "texture": (144, 224),
        "angles": (224, 227),
        "lighting": (227, 254),
        "translation": (254, 257),
    }
    assert {k: (s.start, s.stop) for k, s in SLICES.items()} == expected
    assert SH_DC_INIT == pytest.approx(0.8)


def test_camera_numbers_match_method():
    cam = Camera()
    assert cam.image_size == 224 and cam.focal_px == pytest.approx(1015.0) and cam.principal_px == pytest.approx(112.0)
    assert cam.camera_z == pytest.approx(10.0)
    assert cam.fov_degrees == pytest.approx(12.59, abs=0.01)
    big = cam.with_size(448)
    assert big.focal_px == pytest.approx(2030.0) and big.principal_px == pytest.approx(224.0)
    assert big.fov_degrees == pytest.approx(cam.fov_degrees)


def test_point_on_optical_axis_projects_to_principal_point():
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 2.5], [0.0, 0.0, -3.0]])
    pix, depth = Camera().project(pts)
    assert torch.allclose(pix, torch.full((3, 2), 112.0))
    assert torch.allclose(depth, torch.tensor([10.0, 7.5, 13.0]))
    # +x is image right, +y is image up (smaller v)
    pix, _ = Camera().project(torch.tensor([[0.1, 0.0, 0.0], [0.0, 0.1, 0.0]]))
    assert pix[0, 0] > 112 and pix[1, 1] < 112


def _rotate(point, angles):
    return pose_vertices(torch.tensor([[point]]), torch.tensor([angles]), torch.zeros(1, 3))[0, 0]


def test_euler_axes_move_points_the_right_way():
    a = 0.3
    p = _rotate([0.0, 1.0, 0.0], [a, 0.0, 0.0])  # +x: a point above the centre comes toward the camera
    assert torch.allclose(p, torch.tensor([0.0, math.cos(a), math.sin(a)]), atol=1e-6)
    p = _rotate([0.0, 0.0, 1.0], [0.0, a, 0.0])  # +y: a point in front (nose) moves to +x
    assert torch.allclose(p, torch.tensor([math.sin(a), 0.0, math.cos(a)]), atol=1e-6)
    p = _rotate([1.0, 0.0, 0.0], [0.0, 0.0, a])  # +z: a point on the right moves up
    assert torch.allclose(p, torch.tensor([math.cos(a), math.sin(a), 0.0]), atol=1e-6)
    pix, _ = Camera().project(torch.stack([torch.tensor([0.5, 0.0, 0.0]), _rotate([0.5, 0.0, 0.0], [0.0, 0.0, a])]))
    assert pix[1, 1] < pix[0, 1]  # up = smaller image v


def test_rotation_to_euler_inverts_euler_to_rotation():
    g = torch.Generator().manual_seed(0)
    ranges = torch.tensor([3.0, 2.8, 3.0], dtype=torch.float64)  # |y| < pi/2
    angles = (torch.rand(64, 3, generator=g, dtype=torch.float64) - 0.5) * ranges
    back = rotation_to_euler(euler_to_rotation(angles))
    assert torch.allclose(back, angles, atol=1e-9)
    r = euler_to_rotation(angles)
    assert torch.allclose(r @ r.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(64, 3, 3), atol=1e-12)


# ------------------------------------------------------------------------- shading
def test_dc_only_lighting_shades_uniformly():
    g = torch.Generator().manual_seed(1)
    normals = torch.nn.functional.normalize(torch.randn(2, 50, 3, generator=g), dim=-1)
    albedo = torch.rand(2, 50, 3, generator=g)
    lighting = torch.zeros(2, 27)
    lighting[1, [0, 9, 18]] = torch.tensor([0.2, -0.1, 0.4])
    colours = shade(albedo, normals, lighting)
    dc = SH_A[0] * SH_C[0]
    assert torch.allclose(colours[0], albedo[0] * dc * SH_DC_INIT, atol=1e-6)
    gains = dc * (SH_DC_INIT + torch.tensor([0.2, -0.1, 0.4]))
    assert torch.allclose(colours[1], albedo[1] * gains, atol=1e-6)


def test_sh_basis_parity_and_directional_light():
    g = torch.Generator().manual_seed(2)
    n = torch.nn.functional.normalize(torch.randn(100, 3, generator=g), dim=-1)
    y, y_flip = sh_basis(n), sh_basis(-n)
    odd = [1, 2, 3]  # band 1 flips with the normal, bands 0 and 2 do not
    even = [0, 4, 5, 6, 7, 8]
    assert torch.allclose(y_flip[:, odd], -y[:, odd]) and torch.allclose(y_flip[:, even], y[:, even])
    # light on band 2 (z) brightens normals facing the camera, darkens those facing away
    lighting = torch.zeros(1, 27)
    lighting[0, [2, 11, 20]] = 0.3
    normals = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]]])
    c = shade(torch.ones(1, 3, 3), normals, lighting)[0, :, 0]
    assert c[0] > c[2] > c[1]


# -------------------------------------------------------------------- morphable model
def test_flat_plane_normals_are_the_plane_normal():
    model = _plane_model()
    verts = model.mean_shape.expand(2, -1, -1)
    normals = model.vertex_normals(verts)
    assert torch.allclose(normals, torch.tensor([0.0, 0.0, 1.0]).expand_as(normals), atol=1e-6)
    angles = torch.tensor([[0.0, 0.0, 0.0], [0.2, -0.4, 0.1]])
    posed = pose_vertices(verts, angles, torch.zeros(2, 3))
    rotated_normal = torch.tensor([0.0, 0.0, 1.0]) @ euler_to_rotation(angles[1])
    assert torch.allclose(model.vertex_normals(posed)[1], rotated_normal.expand(verts.shape[1], 3), atol=1e-6)


def test_irradiance_polynomial_equals_the_nine_band_product():
    """The quadratic-form evaluation equals the 9-band basis times the lighting gains."""
    g = torch.Generator().manual_seed(3)
    normals = torch.nn.functional.normalize(torch.randn(3, 500, 3, generator=g), dim=-1)
    lighting = torch.randn(3, 27, generator=g) * 0.5
    reference = sh_basis(normals) @ lighting_matrix(lighting)
    assert torch.allclose(irradiance(normals, lighting), reference, atol=1e-5)
    assert torch.allclose(irradiance(normals[0], lighting[0]), reference[0], atol=1e-5)  # unbatched


def test_shape_is_one_product_over_identity_and_expression_bases(face):
    """``shape`` = mean + id_basis @ identity + exp_basis @ expression, computed as one product
    with the coordinate-major stored matrix (the result is a view of [3, N, B] planes), and the
    landmark path gives the same vertices."""
    g = torch.Generator().manual_seed(4)
    identity, expression = torch.randn(2, 80, generator=g), torch.randn(2, 64, generator=g)
    expected = face.mean_shape + (face.id_basis @ identity.T + face.exp_basis @ expression.T).T.reshape(2, -1, 3)
    assert torch.allclose(face.shape(identity, expression), expected, atol=1e-5)
    assert face.shape_basis_planar.shape == (3 * face.num_vertices, 144)
    assert face.shape(identity, expression).permute(2, 1, 0).is_contiguous()  # planar: x, y, z planes of [N, B]
    assert torch.allclose(face.landmark_vertices(identity, expression), expected[:, face.landmark_indices], atol=1e-5)


def test_vertex_normals_match_an_index_add_reference_and_have_gradients(face):
    """Area-weighted vertex normals equal a plain scatter-add of cross products, batch by batch,
    and are differentiable w.r.t. the vertices."""
    g = torch.Generator().manual_seed(5)
    coeffs = torch.zeros(3, COEFF_DIM)
    coeffs[:, :144] = torch.randn(3, 144, generator=g) * 0.5
    coeffs[:, SLICES["angles"]] = torch.randn(3, 3, generator=g) * 0.2
    vertices = face(coeffs).vertices.double().requires_grad_(True)
    tri = face.triangles
    corners = vertices[:, tri]  # [B, F, 3, 3]
    face_normals = torch.linalg.cross(corners[:, :, 1] - corners[:, :, 0], corners[:, :, 2] - corners[:, :, 0], dim=-1)
    reference = torch.zeros_like(vertices)
    for k in range(3):
        reference = reference.index_add(1, tri[:, k], face_normals)
    reference = torch.nn.functional.normalize(reference, dim=-1)
    normals = face.vertex_normals(vertices)
    assert normals.shape == vertices.shape and normals.permute(2, 1, 0).is_contiguous()  # planar view
    assert torch.allclose(normals, reference, atol=1e-9)
    (normals[..., 2].sum() + normals[0, :, 0].sum()).backward()
    assert vertices.grad is not None and torch.isfinite(vertices.grad).all() and vertices.grad.abs().sum() > 0


def test_one_person_fast_path_equals_the_general_product(face):
    """Frames of one person (shared identity/texture, no gradient) take the cached path; it gives
    the general path's shape and albedo, follows a change of person, and is skipped under autograd."""
    g = torch.Generator().manual_seed(6)
    one = torch.randn(1, 257, generator=g) * 0.5
    frames = one.repeat(4, 1)
    frames[:, SLICES["expression"]] = torch.randn(4, 64, generator=g) * 0.5
    mixed = frames.clone()
    mixed[1:, SLICES["identity"]] += 0.3  # rows differ: general path
    for person in (frames, frames + 0.1):  # a second person replaces the cached one
        c = split_coeffs(person)
        general_shape = face.mean_shape + (c.identity @ face.id_basis.T + c.expression @ face.exp_basis.T).view(4, -1, 3)
        general_albedo = (face.mean_albedo + (c.texture @ face.tex_basis.T).view(4, -1, 3)).clamp(0, 1)
        with torch.no_grad():
            assert torch.allclose(face.shape(c.identity, c.expression), general_shape, atol=1e-5)
            assert torch.allclose(face.albedo(c.texture), general_albedo, atol=1e-6)
        assert face._one_person_cache["identity"][1].equal(c.identity[:1])
    c = split_coeffs(mixed)
    with torch.no_grad():
        expected = face.mean_shape + (c.identity @ face.id_basis.T + c.expression @ face.exp_basis.T).view(4, -1, 3)
        assert torch.allclose(face.shape(c.identity, c.expression), expected, atol=1e-5)
    identity = c.identity[:1].repeat(4, 1).requires_grad_(True)
    face.shape(identity, c.expression).sum().backward()  # general path: gradients reach the identity
    assert identity.grad is not None and identity.grad.abs().sum() > 0


def test_inference_products_match_the_autograd_path_and_the_model_still_copies(face):
    """Without gradients the basis products may take the packed oneDNN path on CPU; it gives the
    autograd path's vertices and colours, and the model (with its caches filled) still deep-copies
    and pickles."""
    g = torch.Generator().manual_seed(9)
    coeffs = torch.randn(5, COEFF_DIM, generator=g) * 0.3
    with torch.no_grad():
        fast = face(coeffs)
    slow = face(coeffs.clone().requires_grad_(True))
    assert torch.allclose(fast.vertices, slow.vertices.detach(), atol=1e-5)
    # (normals of small triangles amplify float rounding of the vertices: colours agree to ~4e-5)
    assert torch.allclose(fast.colours, slow.colours.detach(), atol=2e-4)
    copied = copy.deepcopy(face)
    torch.save(copied, io.BytesIO())
    with torch.no_grad():
        assert torch.equal(copied(coeffs).vertices, fast.vertices)


def test_forward_shapes_and_landmarks_2d_match(face):
    g = torch.Generator().manual_seed(3)
    c = torch.randn(3, COEFF_DIM, generator=g) * 0.5
    c[:, SLICES["angles"]] *= 0.3
    c[:, SLICES["lighting"]] *= 0.2
    c[:, SLICES["translation"]] *= 0.1
    cam = Camera(256)
    out = face(c, cam)
    n = face.num_vertices
    assert out.vertices.shape == (3, n, 3) and out.normals.shape == (3, n, 3) and out.colours.shape == (3, n, 3)
    assert out.landmarks.shape == (3, 68, 2) and out.depth.shape == (3, 68)
    assert torch.allclose(out.normals.norm(dim=-1), torch.ones(3, n), atol=1e-5)
    assert torch.allclose(face.landmarks_2d(c, cam), out.landmarks, atol=1e-3)
    assert torch.allclose(out.depth, cam.depth(out.vertices[:, face.landmark_indices]))


def test_landmarks_are_differentiable(face):
    c = neutral_coeffs(2).requires_grad_(True)
    face.landmarks_2d(c).sum().backward()
    grad = c.grad
    assert torch.isfinite(grad).all() and grad[:, SLICES["expression"]].abs().sum() > 0
    assert grad[:, SLICES["translation"]].abs().sum() > 0


def test_albedo_is_clamped(face):
    tex = torch.full((1, 80), 50.0)
    albedo = face.albedo(torch.cat([tex, -tex]))
    assert albedo.min() >= 0.0 and albedo.max() <= 1.0
    assert albedo[0].max() == 1.0 and albedo[1].min() == 0.0


def test_bad_buffer_shapes_are_rejected():
    model = _plane_model()
    with pytest.raises(ValueError, match="id_basis"):
        MorphableModel(
            model.mean_shape, model.id_basis[:, :10], model.exp_basis, model.mean_albedo, model.tex_basis,
            model.triangles, model.landmark_indices,
        )
    with pytest.raises(ValueError, match="triangles"):
        MorphableModel(
            model.mean_shape, model.id_basis, model.exp_basis, model.mean_albedo, model.tex_basis,
            model.triangles + 1000, model.landmark_indices,
        )


def test_five_points():
    lm = torch.arange(68 * 2, dtype=torch.float32).reshape(68, 2)
    pts = five_points(lm.unsqueeze(0))[0]
    assert pts.shape == (5, 2)
    assert torch.allclose(pts[0], lm[36:42].mean(0)) and torch.allclose(pts[1], lm[42:48].mean(0))
    assert torch.equal(pts[2], lm[30]) and torch.equal(pts[3], lm[48]) and torch.equal(pts[4], lm[54])
    assert np.allclose(five_points(lm.numpy()), pts.numpy())
    assert len(FIVE_POINT_INDICES) == 5


def test_save_load_round_trip(face, tmp_path):
    path = face.save(tmp_path / "face.safetensors")
    loaded = MorphableModel.load(path)
    for key in ("mean_shape", "id_basis", "exp_basis", "mean_albedo", "tex_basis", "triangles", "landmark_indices",
                "skin_mask", "mouth_indices"):
        assert torch.equal(getattr(loaded, key), getattr(face, key)), key
    assert loaded.name == face.name and loaded.metadata == face.metadata
    c = _coeffs(jaw_open=0.5)
    assert torch.equal(loaded(c).colours, face(c).colours)


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(InputError, match="not found"):
        MorphableModel.load(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="bad.safetensors"):
        MorphableModel.load(bad)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other), metadata={"format": "something-else"})
    with pytest.raises(InputError, match="not a talkinghead face model"):
        MorphableModel.load(other)


# ------------------------------------------------------------------ procedural face
def test_procedural_model_is_deterministic():
    a, b = make_procedural_model(seed=3, resolution=24), make_procedural_model(seed=3, resolution=24)
    c = make_procedural_model(seed=4, resolution=24)
    for key in ("mean_shape", "id_basis", "exp_basis", "tex_basis", "triangles", "mean_albedo"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key
    assert not torch.allclose(a.id_basis, c.id_basis)
    assert not torch.allclose(a.tex_basis, c.tex_basis)
    assert torch.equal(a.mean_shape, c.mean_shape)  # the seed only varies the random components


def test_procedural_model_size_and_placement(face):
    assert 4000 <= face.num_vertices <= 8000
    assert face.id_basis.shape == (face.num_vertices * 3, 80) and face.exp_basis.shape[1] == 64
    out = face(neutral_coeffs(1))
    pix = Camera().project(out.vertices[0])[0]
    width = (pix[:, 0].max() - pix[:, 0].min()) / 224
    assert 0.6 <= width <= 0.72
    assert abs(face.mean_shape[:, :2].mean(0)).max() < 0.15  # centred near the origin
    assert torch.all(face.mean_albedo >= 0) and torch.all(face.mean_albedo <= 1)


def test_procedural_mesh_is_a_front_facing_disk(face):
    tri = face.triangles.numpy()
    nv = face.num_vertices
    assert np.unique(tri).size == nv  # every vertex is used
    edges = np.sort(np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]]), axis=1)
    unique, counts = np.unique(edges, axis=0, return_counts=True)
    assert counts.max() == 2  # manifold
    assert nv - len(unique) + len(tri) == 1  # Euler characteristic of a disk: no holes
    boundary = unique[counts == 1]
    assert np.all(np.bincount(boundary.ravel(), minlength=nv)[np.unique(boundary)] == 2)  # one simple loop
    # counter-clockwise seen from the camera: positive area in the model's x-y plane, and in
    # the image (v down: negative) for every triangle that is not a sub-pixel sliver
    assert (_xy_areas(face.mean_shape, face.triangles) > 0).all()
    pix = Camera().project(face(neutral_coeffs(1)).vertices[0])[0]
    areas = _xy_areas(pix, face.triangles)
    assert (areas[areas.abs() > 0.05] < 0).all()


def _xy_areas(points: torch.Tensor, tri: torch.Tensor) -> torch.Tensor:
    """Twice the signed area of each triangle in the first two coordinates."""
    p = points.double()
    a, b, c = p[tri[:, 0]], p[tri[:, 1]], p[tri[:, 2]]
    return (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])


@pytest.mark.parametrize("unit", ["jaw_open", "lip_round", "lip_spread", "smile", "brow_raise", "blink", "lip_close"])
def test_expression_units_do_not_fold_the_mesh(face, unit):
    expression = _coeffs(**{unit: 1.0})[:, SLICES["expression"]]
    if unit == "lip_close":
        expression[:, EXPRESSION_UNITS["jaw_open"]] = 0.2  # it closes a slightly open jaw
    moved = face.shape(torch.zeros(1, 80), expression)[0]
    ratio = _xy_areas(moved, face.triangles) / _xy_areas(face.mean_shape, face.triangles)
    assert ratio.min() > -0.02  # no triangle turns over (blink squeezes the eye opening to ~0)


def test_jaw_open_lowers_the_lower_lip_and_opens_a_recessed_mouth(face):
    neutral, open_ = _landmarks(face), _landmarks(face, jaw_open=1.0)
    assert open_[57, 1] - neutral[57, 1] > 15 and open_[66, 1] - neutral[66, 1] > 15  # pixels, downward
    assert abs(open_[62, 1] - neutral[62, 1]) < 3  # upper lip stays
    assert neutral[66, 1] - neutral[62, 1] < 1.0  # lips closed at rest
    assert open_[66, 1] - open_[62, 1] > 20
    verts = face.shape(torch.zeros(1, 80), _coeffs(jaw_open=1.0)[:, SLICES["expression"]])[0]
    mouth = face.mouth_indices
    lips_z = verts[face.landmark_indices[48:60], 2].mean()
    assert verts[mouth, 2].min() < lips_z - 0.1  # the cavity lies well behind the lips


def test_blink_closes_the_eyelids(face):
    pairs = [(37, 41), (38, 40), (43, 47), (44, 46)]
    neutral, closed = _landmarks(face), _landmarks(face, blink=1.0)
    for upper, lower in pairs:
        assert neutral[lower, 1] - neutral[upper, 1] > 3.0
        assert abs(closed[lower, 1] - closed[upper, 1]) < 0.3
    half = _landmarks(face, blink=0.5)
    assert 1.0 < half[41, 1] - half[37, 1] < neutral[41, 1] - neutral[37, 1]


def test_lip_units_change_mouth_shape(face):
    def width(lm):
        return float(lm[54, 0] - lm[48, 0])

    neutral = _landmarks(face)
    assert width(_landmarks(face, lip_round=1.0)) < 0.8 * width(neutral)
    assert width(_landmarks(face, lip_spread=1.0)) > 1.1 * width(neutral)
    smile = _landmarks(face, smile=1.0)
    assert width(smile) > 1.1 * width(neutral)
    assert smile[48, 1] < neutral[48, 1] - 3 and smile[54, 1] < neutral[54, 1] - 3  # corners rise
    # lip_close shuts a slightly open mouth
    ajar = _landmarks(face, jaw_open=0.15)
    closed = _landmarks(face, jaw_open=0.15, lip_close=1.0)
    assert ajar[66, 1] - ajar[62, 1] > 3.0
    assert abs(closed[66, 1] - closed[62, 1]) < 1.0


def test_brow_raise_lifts_the_brows(face):
    neutral, raised = _landmarks(face), _landmarks(face, brow_raise=1.0)
    assert torch.all(raised[17:27, 1] < neutral[17:27, 1] - 3)
    assert torch.allclose(raised[48:68], neutral[48:68], atol=0.5)  # mouth unaffected


def test_landmarks_sit_at_their_semantic_places(face):
    lm = _landmarks(face)
    u, v = lm[:, 0], lm[:, 1]
    assert v[8] == v[:17].max()  # chin is the lowest jaw point
    assert u[0] < u[36] < u[39] < u[42] < u[45] < u[16]  # left to right across the eyes
    assert v[19] < v[37] < v[30] < v[33] < v[51] < v[57] < v[8]  # top to bottom
    assert abs(u[30] - 112) < 1 and abs(u[8] - 112) < 1  # midline
    assert u[48] < u[60] < u[64] < u[54]  # outer corners outside inner ones
    mirrored = torch.tensor([16 - i for i in range(17)])
    assert torch.allclose(u[:17] - 112, -(u[mirrored] - 112), atol=0.5)  # symmetric jaw line


def test_region_masks(face):
    mouth = set(face.mouth_indices.tolist())
    assert set(face.landmark_indices[48:68].tolist()) <= mouth
    assert face.landmark_indices[30].item() not in mouth
    skin = face.skin_mask
    assert skin[face.landmark_indices[[8, 19, 30]]].all()
    assert 0.8 < skin.float().mean() < 0.99  # eyes and mouth cavity excluded


def test_random_identities_stay_plausible(face):
    g = torch.Generator().manual_seed(5)
    c = neutral_coeffs(8)
    c[:, SLICES["identity"]] = torch.randn(8, 80, generator=g)
    c[:, SLICES["texture"]] = torch.randn(8, 80, generator=g)
    out = face(c)
    pix = Camera().project(out.vertices)[0]
    width = (pix[..., 0].amax(1) - pix[..., 0].amin(1)) / 224
    assert torch.all((width > 0.5) & (width < 0.85))
    skin = out.albedo[:, face.skin_mask].mean(1)  # [8, 3]
    assert torch.all(skin[:, 0] >= skin[:, 1]) and torch.all(skin[:, 1] >= skin[:, 2])  # skin hues: r >= g >= b


def test_procedural_model_rejects_bad_settings():
    with pytest.raises(ConfigError, match="resolution"):
        make_procedural_model(resolution=3)
    with pytest.raises(ConfigError, match="seed"):
        make_procedural_model(seed=-1)


def test_target_vertices_picks_the_density():
    small = make_procedural_model(resolution=24)
    model = make_procedural_model(target_vertices=2000)
    assert abs(model.num_vertices - 2000) < 300
    assert small.num_vertices < model.num_vertices


def test_bfm_sized_procedural_model():  # ~35k vertices, like the BFM front face (a few seconds)
    model = make_procedural_model(target_vertices=35000)
    assert abs(model.num_vertices - 35000) < 3500
    assert 60000 < model.num_triangles < 80000
    lm = model.landmarks_2d(_coeffs(jaw_open=1.0))
    assert lm[0, 66, 1] - lm[0, 62, 1] > 20


# ------------------------------------------------------------------------- BFM 2009
def _write_fake_bfm(folder: Path, rng: np.random.Generator) -> dict:
    """Tiny files in the true BFM/Deng formats: 12 BFM vertices, 9 expression-model vertices
    (trimIndex), 6 front vertices (idx) forming a flat 3 x 2 grid facing +z."""
    from scipy.io import savemat

    folder.mkdir(parents=True, exist_ok=True)
    n_bfm, n_exp = 12, 9
    trim = np.array([11, 2, 5, 7, 1, 9, 12, 4, 6])  # 1-based BFM vertex of each expression vertex
    front = np.array([3, 5, 1, 8, 2, 6])  # 1-based expression vertex of each front vertex
    grid = np.array([[0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [2, 1]], dtype=float)
    shape_mu = rng.normal(size=(n_bfm, 3)) * 1e5
    for j, e in enumerate(front):  # front vertex j sits on the grid (BFM units: 1e5 per unit)
        shape_mu[trim[e - 1] - 1] = [grid[j, 0] * 1e5, grid[j, 1] * 1e5, 5e4]
    data = {
        "shapeMU": shape_mu.reshape(-1, 1).astype(np.float32),
        "shapePC": rng.normal(size=(n_bfm * 3, 199)).astype(np.float32),
        "shapeEV": np.abs(rng.normal(size=(199, 1))).astype(np.float32) * 1e3,
        "texMU": rng.uniform(0, 255, size=(n_bfm * 3, 1)).astype(np.float32),
        "texPC": rng.normal(size=(n_bfm * 3, 199)).astype(np.float32),
        "texEV": np.abs(rng.normal(size=(199, 1))).astype(np.float32) * 10,
    }
    savemat(folder / "01_MorphableModel.mat", data)
    exp_pc = rng.normal(size=(79, n_exp * 3)).astype(np.float32)
    with open(folder / "Exp_Pca.bin", "wb") as f:
        np.array([79], dtype=np.int32).tofile(f)
        rng.normal(size=n_exp * 3).astype(np.float32).tofile(f)  # the mean (unused)
        exp_pc.tofile(f)
    std = np.abs(rng.normal(size=79)) * 1e4
    np.savetxt(folder / "std_exp.txt", std)
    savemat(folder / "BFM_exp_idx.mat", {"trimIndex": trim.reshape(-1, 1).astype(np.float64)})
    savemat(folder / "BFM_front_idx.mat", {"idx": front.reshape(-1, 1).astype(np.float64)})
    tri = np.array([[1, 2, 5], [1, 5, 4], [2, 3, 6], [2, 6, 5]])  # counter-clockwise from +z
    savemat(
        folder / "facemodel_info.mat",
        {
            "tri": tri.astype(np.float64),
            "keypoints": (np.arange(68) % 6 + 1).reshape(1, -1).astype(np.float64),
            "skinmask": np.array([[1, 1, 0, 1, 0, 1]], dtype=np.float64),
            "frontmask2_idx": np.arange(1, 7).reshape(-1, 1).astype(np.float64),
            "point_buf": np.ones((6, 8)),
            "tri_mask2": tri.astype(np.float64),
        },
    )
    return {"data": data, "trim": trim, "front": front, "exp_pc": exp_pc, "std": std, "tri": tri, "grid": grid}


def test_convert_bfm09_on_fake_files(tmp_path):
    fake = _write_fake_bfm(tmp_path / "BFM", np.random.default_rng(0))
    out = convert_bfm09(tmp_path / "BFM", tmp_path / "bfm.safetensors")
    model = MorphableModel.load(out)
    data, trim, front = fake["data"], fake["trim"], fake["front"]
    bfm_vertex = trim[front - 1] - 1  # 0-based BFM vertex of each front vertex
    assert model.num_vertices == 6 and model.num_triangles == 4
    # mean shape: the grid in decimetre units, recentred
    expected = np.concatenate([fake["grid"], np.full((6, 1), 0.5)], 1)
    assert np.allclose(model.mean_shape.numpy(), expected - expected.mean(0), atol=1e-5)
    # identity basis: vertex-major rows of the front vertices, x EV / 1e5, first 80
    pc = data["shapePC"].reshape(12, 3, 199)[bfm_vertex].reshape(18, 199)
    assert np.allclose(model.id_basis.numpy(), pc[:, :80] * data["shapeEV"][:80, 0] / 1e5, rtol=1e-5)
    tex = data["texPC"].reshape(12, 3, 199)[bfm_vertex].reshape(18, 199)
    assert np.allclose(model.tex_basis.numpy(), tex[:, :80] * data["texEV"][:80, 0] / 255, rtol=1e-5)
    assert np.allclose(model.mean_albedo.numpy(), data["texMU"].reshape(12, 3)[bfm_vertex] / 255, rtol=1e-5)
    exp = fake["exp_pc"].T.reshape(9, 3, 79)[front - 1].reshape(18, 79)
    assert np.allclose(model.exp_basis.numpy(), exp[:, :64] * fake["std"][:64] / 1e5, rtol=1e-5)
    assert np.array_equal(model.triangles.numpy(), fake["tri"] - 1)  # already counter-clockwise
    assert np.array_equal(model.landmark_indices.numpy(), np.arange(68) % 6)
    assert model.skin_mask.tolist() == [True, True, False, True, False, True]
    assert model.name == "bfm09-front"


def test_convert_bfm09_reorients_clockwise_triangles(tmp_path):
    from scipy.io import loadmat, savemat

    _write_fake_bfm(tmp_path / "BFM", np.random.default_rng(1))
    info = loadmat(tmp_path / "BFM" / "facemodel_info.mat")
    info["tri"] = info["tri"][:, [0, 2, 1]]
    savemat(tmp_path / "BFM" / "facemodel_info.mat", {k: v for k, v in info.items() if not k.startswith("__")})
    model = MorphableModel.load(convert_bfm09(tmp_path / "BFM", tmp_path / "bfm.safetensors"))
    normals = model.vertex_normals(model.mean_shape.unsqueeze(0))[0]
    assert torch.allclose(normals, torch.tensor([0.0, 0.0, 1.0]).expand_as(normals), atol=1e-5)


def test_missing_bfm_files_are_named_in_one_line(tmp_path):
    folder = tmp_path / "BFM"
    folder.mkdir()
    (folder / "std_exp.txt").write_text("1\n")
    with pytest.raises(MissingWeightsError) as err:
        convert_bfm09(folder, tmp_path / "out.safetensors")
    message = str(err.value)
    assert "\n" not in message and str(folder) in message and BFM_URL in message
    for name in BFM_FILES:
        assert (name in message) == (name != "std_exp.txt"), name
    assert "3DFace" in message and "Deep3DFaceReconstruction" in message
    assert not (tmp_path / "out.safetensors").exists()


def test_load_face_model(tmp_path):
    with pytest.raises(MissingWeightsError, match="convert_bfm09"):
        load_face_model(tmp_path / "missing.safetensors")
    _write_fake_bfm(tmp_path / "BFM", np.random.default_rng(2))
    target = tmp_path / "models" / "bfm.safetensors"
    model = load_face_model(target, bfm_dir=tmp_path / "BFM")  # converts once
    assert target.is_file() and model.num_vertices == 6
    assert torch.equal(load_face_model(target).mean_shape, model.mean_shape)


def test_corrupt_bfm_file_is_reported(tmp_path):
    _write_fake_bfm(tmp_path / "BFM", np.random.default_rng(3))
    (tmp_path / "BFM" / "Exp_Pca.bin").write_bytes(np.array([79], dtype=np.int32).tobytes() + b"\0" * 64)
    with pytest.raises(InputError, match="Exp_Pca.bin"):
        convert_bfm09(tmp_path / "BFM", tmp_path / "bfm.safetensors")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_forward_on_gpu_matches_cpu(face):
    g = torch.Generator().manual_seed(7)
    c = torch.randn(4, COEFF_DIM, generator=g) * 0.3
    cpu = face(c)
    gpu = face.to("cuda")(c.cuda())
    face.to("cpu")
    assert torch.allclose(gpu.colours.cpu(), cpu.colours, atol=1e-4)
    assert torch.allclose(gpu.landmarks.cpu(), cpu.landmarks, atol=1e-3)
