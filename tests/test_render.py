"""Tests of the renderer interface and the pure-torch rasterizer (talkinghead/render/)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from talkinghead.errors import ConfigError, InputError
from talkinghead.face.camera import Camera
from talkinghead.render import RenderOutput, TorchRenderer, get_renderer, interpolate, rasterize
from talkinghead.render.pytorch3d_backend import pytorch3d_available

CAMERA = Camera()


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def world_from_pixels(pixels, depth, camera: Camera = CAMERA) -> torch.Tensor:
    """World-space points ``[..., 3]`` seen at pixel positions ``[..., 2]`` and depths ``[...]``."""
    pixels = torch.as_tensor(pixels, dtype=torch.float64)
    depth = torch.as_tensor(depth, dtype=torch.float64).expand(pixels.shape[:-1])
    return camera.unproject(pixels, depth).float()


def brute_force(pixels: np.ndarray, depth: np.ndarray, triangles: np.ndarray, height: int, width: int, eps: float = 1e-3):
    """Independent float64 z-buffer over all pixel centres, one triangle at a time.

    Returns ``(triangle_id [H, W], ambiguous [H, W])``: ``ambiguous`` marks centres within
    ``eps`` pixels of an edge of a triangle, or where two nearest depths nearly tie."""
    jj, ii = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    best_depth = np.full((height, width), np.inf)
    second_depth = np.full((height, width), np.inf)
    tri_id = np.full((height, width), -1)
    ambiguous = np.zeros((height, width), bool)
    for f, (a, b, c) in enumerate(triangles):
        p = pixels[[a, b, c]].astype(np.float64)
        z = depth[[a, b, c]].astype(np.float64)
        if z.min() <= CAMERA.znear:
            continue
        area = (p[1, 0] - p[0, 0]) * (p[2, 1] - p[0, 1]) - (p[1, 1] - p[0, 1]) * (p[2, 0] - p[0, 0])
        if area == 0:
            continue
        lam, dist = [], []
        for k in range(3):
            s, e = p[(k + 1) % 3], p[(k + 2) % 3]
            edge = (e[0] - s[0]) * (ii - s[1]) - (e[1] - s[1]) * (jj - s[0])
            lam.append(edge / area)
            dist.append(np.abs(edge) / np.hypot(*(e - s)))
        lam = np.stack(lam)
        inside = (lam > 0).all(0)
        ambiguous |= (np.min(dist, 0) < eps) & (lam > -eps).all(0)
        pixel_depth = np.where(inside, 1.0 / np.maximum((lam / z[:, None, None]).sum(0), 1e-12), np.inf)
        nearer = pixel_depth < best_depth
        second_depth = np.where(nearer, best_depth, np.minimum(second_depth, pixel_depth))
        best_depth = np.where(nearer, pixel_depth, best_depth)
        tri_id = np.where(nearer, f, tri_id)
    with np.errstate(invalid="ignore"):
        ambiguous |= np.isfinite(second_depth) & (second_depth - best_depth < 1e-4)
    return tri_id, ambiguous


def raster_ids(pixels, depth, triangles, height, width, **kwargs) -> torch.Tensor:
    """``rasterize`` on one unbatched mesh -> triangle id image ``[H, W]`` (-1 empty)."""
    pixel_index, triangle_index = rasterize(
        torch.as_tensor(pixels, dtype=torch.float32)[None],
        torch.as_tensor(depth, dtype=torch.float32)[None],
        torch.as_tensor(triangles, dtype=torch.long),
        height,
        width,
        **kwargs,
    )
    ids = torch.full((height * width,), -1, dtype=torch.long)
    ids[pixel_index] = triangle_index
    return ids.view(height, width)


def triangle_soup(seed: int, count: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random triangles in pixel space (some big, some off-screen) at random depths."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-0.2 * size, 1.2 * size, (count, 1, 2))
    radii = rng.choice([0.7, 2.0, 6.0, 0.6 * size], count)[:, None, None]
    pixels = (centres + rng.uniform(-1, 1, (count, 3, 2)) * radii).reshape(-1, 2)
    depth = rng.uniform(8.0, 12.0, count * 3)
    return pixels, depth, np.arange(count * 3).reshape(count, 3)


def grid_mesh(n: int = 6, lo: float = 10.5, step: float = 4.0, depth: float = 10.0):
    """An n x n vertex grid in pixel space with vertices on pixel centres (edges pass exactly
    through pixel centres), split along alternating diagonals."""
    jj, ii = np.meshgrid(np.arange(n), np.arange(n))
    pixels = np.stack([lo + step * jj, lo + step * ii], -1).reshape(-1, 2).astype(np.float32)
    idx = np.arange(n * n).reshape(n, n)
    tris = []
    for i in range(n - 1):
        for j in range(n - 1):
            a, b, c, d = idx[i, j], idx[i, j + 1], idx[i + 1, j], idx[i + 1, j + 1]
            tris += [[a, b, d], [a, d, c]] if (i + j) % 2 == 0 else [[a, b, c], [b, d, c]]
    return pixels, np.full(n * n, depth, np.float32), np.array(tris)


# --------------------------------------------------------------------------------------
# Coverage
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_single_triangles_cover_exactly_the_brute_force_pixels(seed):
    size = 64
    pixels, depth, _ = triangle_soup(seed, 8, size)
    # A big one (about 200 x 200 px on a 224 image) is checked on its own below.
    for f in range(8):
        tri = np.array([[3 * f, 3 * f + 1, 3 * f + 2]])
        expected, ambiguous = brute_force(pixels, depth, tri, size, size)
        got = raster_ids(pixels, depth, tri, size, size).numpy()
        assert ambiguous.sum() < 0.02 * size * size
        np.testing.assert_array_equal(got[~ambiguous], expected[~ambiguous])


def test_big_and_partly_offscreen_triangle():
    size = 224
    pixels = np.array([[12.3, 7.7], [215.1, 20.4], [40.9, 211.6], [-50.2, 100.1], [150.3, -80.7], [300.4, 260.2]])
    depth = np.array([9.0, 10.0, 11.0, 10.0, 10.0, 10.0])
    for tri in (np.array([[0, 1, 2]]), np.array([[3, 4, 5]])):
        expected, ambiguous = brute_force(pixels, depth, tri, size, size)
        for max_candidates in (1 << 21, 5000):  # the second forces chunking
            got = raster_ids(pixels, depth, tri, size, size, max_candidates=max_candidates).numpy()
            np.testing.assert_array_equal(got[~ambiguous], expected[~ambiguous])
        assert (expected >= 0).sum() > 15000


@pytest.mark.parametrize("seed", [3, 4])
def test_triangle_soup_matches_brute_force_zbuffer(seed):
    size = 48
    pixels, depth, tris = triangle_soup(seed, 40, size)
    expected, ambiguous = brute_force(pixels, depth, tris, size, size)
    got = raster_ids(pixels, depth, tris, size, size).numpy()
    assert (expected >= 0).sum() > 100 and ambiguous.mean() < 0.05
    np.testing.assert_array_equal(got[~ambiguous], expected[~ambiguous])


@pytest.mark.parametrize("buckets", [(2,), (2, 3, 4, 6, 8, 12, 16, 24, 32), (2, 64, 256)])
def test_bucket_settings_do_not_change_the_result(buckets):
    size = 64
    pixels, depth, tris = triangle_soup(7, 60, size)
    reference = raster_ids(pixels, depth, tris, size, size)
    got = raster_ids(pixels, depth, tris, size, size, bucket_sizes=buckets, max_candidates=4096)
    assert torch.equal(got, reference)


def test_nearer_triangle_wins_in_either_order():
    camera = CAMERA.with_size(128)
    near = world_from_pixels([[20.0, 20.0], [100.0, 30.0], [40.0, 100.0]], 9.0, camera)
    far = world_from_pixels([[10.0, 10.0], [110.0, 10.0], [60.0, 110.0]], 11.0, camera)
    colours = torch.tensor([[1.0, 0.0, 0.0]] * 3 + [[0.0, 0.0, 1.0]] * 3)[None]
    for order in ([near, far], [far, near]):
        vertices = torch.cat(order)[None]
        near_id = 0 if order[0] is near else 1
        vertex_colours = colours if near_id == 0 else colours.flip(1)
        out = TorchRenderer().render(vertices, torch.tensor([[0, 1, 2], [3, 4, 5]]), vertex_colours, CAMERA, 128)
        centre = out.triangle_id[0, 50, 50]
        assert centre == near_id
        assert torch.allclose(out.rgb[0, :, 50, 50], torch.tensor([1.0, 0.0, 0.0]))
        assert out.depth[0, 0, 50, 50] == pytest.approx(9.0, abs=1e-4)
        only_far = (out.triangle_id[0] == 1 - near_id).sum()
        assert only_far > 0  # the far triangle still shows around the near one


def test_empty_scenes_are_background():
    renderer = TorchRenderer()
    verts = world_from_pixels([[10.0, 10.0], [50.0, 10.0], [10.0, 50.0]], 10.0)[None]
    colours = torch.rand(1, 3, 3)
    behind = verts.clone()
    behind[..., 2] = 12.0  # camera at z = 10: behind it
    offscreen = world_from_pixels([[-90.0, 10.0], [-50.0, 10.0], [-70.0, 50.0]], 10.0)[None]
    scenes = [
        (verts, torch.zeros(0, 3, dtype=torch.long)),
        (behind, torch.tensor([[0, 1, 2]])),
        (offscreen, torch.tensor([[0, 1, 2]])),
    ]
    for vertices, triangles in scenes:
        out = renderer.render(vertices, triangles, colours, CAMERA, 64, background=(0.25, 0.5, 0.75))
        assert out.rgba.shape == (1, 4, 64, 64)
        assert (out.alpha == 0).all() and (out.triangle_id == -1).all() and (out.depth == 0).all()
        assert torch.equal(out.rgb[0, :, 5, 7], torch.tensor([0.25, 0.5, 0.75]))


def test_near_plane_drops_a_triangle_crossing_it():
    verts = world_from_pixels([[10.0, 10.0], [50.0, 10.0], [10.0, 50.0]], 10.0)[None]
    verts[0, 2, 2] = 9.95  # depth 0.05 < znear 0.1
    out = TorchRenderer().render(verts, torch.tensor([[0, 1, 2]]), torch.ones(1, 3, 3), CAMERA, 64)
    assert not out.mask.any()


@pytest.mark.parametrize("n, step", [(6, 4.0), (11, 1.0), (13, 0.5)])
def test_shared_edges_no_gaps_no_double_claims(n, step):
    """Grid vertices on pixel centres: many centres lie exactly on edges and vertices (with
    step 0.5 every triangle holds at most one centre, so the single-centre pass decides)."""
    size = 40
    pixels, depth, tris = grid_mesh(n=n, step=step)
    claims = np.zeros((size, size), int)
    for tri in tris:  # each triangle alone
        claims += raster_ids(pixels, depth, tri[None], size, size).numpy() >= 0
    # The grid spans centres 10.5 .. 10.5 + extent; by the top-left rule its left and top
    # borders are in, its right and bottom borders out: each pixel claimed exactly once.
    extent = int((n - 1) * step)
    expected = np.zeros((size, size), int)
    expected[10 : 10 + extent, 10 : 10 + extent] = 1
    np.testing.assert_array_equal(claims, expected)
    together = raster_ids(pixels, depth, tris, size, size).numpy()
    np.testing.assert_array_equal(together >= 0, expected > 0)


def test_shared_edges_of_a_random_fan_through_the_renderer():
    """A fan of random triangles around a common vertex, through projection: the union is
    claimed exactly once."""
    rng = np.random.default_rng(5)
    angles = 2 * np.pi * np.arange(9) / 9 + rng.uniform(-0.25, 0.25, 9)
    ring = np.stack([32 + 25 * np.cos(angles), 32 + 25 * np.sin(angles)], -1)
    pixels = np.concatenate([[[32.0, 32.0]], ring])
    vertices = world_from_pixels(pixels, 10.0, CAMERA.with_size(64))[None]
    fan = torch.tensor([[0, 1 + k, 1 + (k + 1) % 9] for k in range(9)])
    renderer = TorchRenderer()
    claims = torch.zeros(64, 64, dtype=torch.long)
    for tri in fan:
        claims += renderer.render(vertices, tri[None], torch.ones(1, 10, 3), CAMERA, 64).mask[0].long()
    assert claims.max() == 1
    whole = renderer.render(vertices, fan, torch.ones(1, 10, 3), CAMERA, 64).mask[0]
    assert torch.equal(whole, claims.bool())
    # and no holes: the union is the brute-force coverage of the fan
    ids, ambiguous = brute_force(pixels, np.full(10, 10.0), fan.numpy(), 64, 64)
    assert torch.equal(whole[torch.from_numpy(~ambiguous)], torch.from_numpy(ids >= 0)[torch.from_numpy(~ambiguous)])


def test_backface_culling():
    ccw = world_from_pixels([[10.0, 50.0], [50.0, 50.0], [10.0, 10.0]], 10.0)  # CCW seen from the camera (y up)
    vertices = ccw[None]
    colours = torch.ones(1, 3, 3)
    normal = torch.cross(ccw[1] - ccw[0], ccw[2] - ccw[0], dim=0)
    assert normal[2] > 0  # points at the camera (+z): a front face
    front, back = torch.tensor([[0, 1, 2]]), torch.tensor([[0, 2, 1]])
    assert TorchRenderer(cull_backfaces=True).render(vertices, front, colours, CAMERA, 64).mask.any()
    assert not TorchRenderer(cull_backfaces=True).render(vertices, back, colours, CAMERA, 64).mask.any()
    both = TorchRenderer().render(vertices, back, colours, CAMERA, 64).mask
    assert torch.equal(both, TorchRenderer().render(vertices, front, colours, CAMERA, 64).mask)


# --------------------------------------------------------------------------------------
# Interpolation and gradients
# --------------------------------------------------------------------------------------


def tilted_plane_scene():
    """A quad on a steeply tilted plane (depth 6 .. 14) with colours linear in world position."""
    corners = torch.tensor([[-0.6, -0.6, -4.0], [0.6, -0.6, -4.0], [0.45, 0.5, 4.0], [-0.45, 0.5, 4.0]])
    linear = torch.tensor([[0.3, -0.2, 0.05], [0.1, 0.4, -0.02], [-0.2, 0.1, 0.08]])  # colour = linear @ x + offset

    def colour_of(points):
        return points @ linear.T + torch.tensor([0.5, 0.5, 0.5])

    return corners, torch.tensor([[0, 1, 2], [0, 2, 3]]), colour_of


def test_perspective_correct_interpolation():
    corners, tris, colour_of = tilted_plane_scene()
    size = 96
    out = TorchRenderer().render(corners[None], tris, colour_of(corners)[None], CAMERA, size)
    mask = out.mask[0]
    assert mask.sum() > 500
    camera = CAMERA.with_size(size)
    ii, jj = torch.nonzero(mask, as_tuple=True)
    centres = torch.stack([jj + 0.5, ii + 0.5], -1).double()
    # Ray through each centre: point(depth) = unproject(centre, depth), linear in depth.
    ones = torch.ones(len(ii), dtype=torch.float64)
    p1, p2 = camera.unproject(centres, ones), camera.unproject(centres, 2 * ones)
    c = corners.double()
    normal = torch.cross(c[1] - c[0], c[2] - c[0], dim=0)
    s = ((c[0] - p1) @ normal) / ((p2 - p1) @ normal)
    seen = p1 + s[:, None] * (p2 - p1)  # world point seen through the centre (depth = 1 + s)
    expected = colour_of(seen.float())
    got = out.rgb[0][:, ii, jj].T
    assert (got - expected).abs().max() < 1e-4
    assert (out.depth[0, 0, ii, jj] - (1 + s).float()).abs().max() < 1e-3

    # Affine (screen-space) interpolation would not pass: it misses by far more than 1e-4.
    bary = out.bary[0, ii, jj].double()  # perspective-correct weights [P, 3]
    corner_depth = camera.depth(c)[tris[out.triangle_id[0, ii, jj]]]  # [P, 3]
    screen = bary * corner_depth
    screen = screen / screen.sum(-1, keepdim=True)  # back to screen-space barycentrics
    affine = (screen.unsqueeze(-1) * colour_of(c.float())[tris[out.triangle_id[0, ii, jj]]].double()).sum(1)
    assert (affine.float() - expected).abs().max() > 1e-2


def test_interpolate_other_attributes_matches_rgb():
    corners, tris, colour_of = tilted_plane_scene()
    colours = colour_of(corners)[None]
    out = TorchRenderer().render(corners[None], tris, colours, CAMERA, 64)
    assert torch.allclose(interpolate(colours, tris, out), out.rgb * out.alpha, atol=1e-6)
    ones = interpolate(torch.ones(1, 4, 1), tris, out)
    assert torch.allclose(ones, out.alpha, atol=1e-5)


def test_gradients_reach_colours_and_positions():
    torch.manual_seed(0)
    corners, tris, colour_of = tilted_plane_scene()
    vertices = corners.double()[None].requires_grad_(True)
    colours = torch.rand(1, 4, 3, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(1, 3, 48, 48, dtype=torch.float64)
    renderer = TorchRenderer()

    def loss_of(v, c):
        return (renderer.render(v, tris, c, CAMERA, 48).rgb * weights).sum()

    loss_of(vertices, colours).backward()
    assert colours.grad.abs().min() > 0 and vertices.grad.abs().sum() > 0
    # Finite differences in x/y/z (coverage does not change for tiny steps).
    eps = 1e-6
    for k, axis in [(0, 0), (2, 1), (3, 2)]:
        step = torch.zeros_like(vertices)
        step[0, k, axis] = eps
        with torch.no_grad():
            numeric = (loss_of(vertices + step, colours) - loss_of(vertices - step, colours)) / (2 * eps)
        assert vertices.grad[0, k, axis].item() == pytest.approx(numeric.item(), rel=1e-3, abs=1e-6)


def test_batch_equals_separate_calls():
    corners, tris, colour_of = tilted_plane_scene()
    torch.manual_seed(1)
    vertices = corners[None] + 0.1 * torch.randn(3, 4, 3)
    colours = torch.rand(3, 4, 3)
    renderer = TorchRenderer()
    batched = renderer.render(vertices, tris, colours, CAMERA, 64)
    for b in range(3):
        single = renderer.render(vertices[b : b + 1], tris, colours[b : b + 1], CAMERA, 64)
        assert torch.equal(single.triangle_id, batched.triangle_id[b : b + 1])
        assert torch.allclose(single.rgba, batched.rgba[b : b + 1], atol=1e-6)
        assert torch.allclose(single.depth, batched.depth[b : b + 1], atol=1e-5)


def test_cpu_batch_groups_do_not_change_the_result(monkeypatch):
    import talkinghead.render.rasterizer as rasterizer_module

    pixels, depth, tris = triangle_soup(8, 30, 48)
    shifts = torch.tensor([[[0.0, 0.0]], [[3.3, -2.1]], [[-5.2, 1.7]]])
    batch_pixels = torch.as_tensor(pixels, dtype=torch.float32)[None] + shifts
    batch_depth = torch.as_tensor(depth, dtype=torch.float32)[None].expand(3, -1)
    tris = torch.as_tensor(tris)
    whole = rasterize(batch_pixels, batch_depth, tris, 48, 48)
    monkeypatch.setattr(rasterizer_module, "_CPU_TRIANGLES_PER_GROUP", 1)  # one batch element per group
    grouped = rasterize(batch_pixels, batch_depth, tris, 48, 48)
    assert whole[0].numel() > 0
    assert torch.equal(whole[0], grouped[0]) and torch.equal(whole[1], grouped[1])


def test_output_shapes_background_and_image_size():
    corners, tris, colour_of = tilted_plane_scene()
    colours = torch.rand(2, 4, 5)  # any number of channels
    bg = torch.rand(2, 5, 32, 32)
    vertices = corners[None].expand(2, -1, -1)
    out = TorchRenderer().render(vertices, tris, colours, CAMERA.with_size(128), image_size=32, background=bg)
    assert isinstance(out, RenderOutput)
    assert out.rgba.shape == (2, 6, 32, 32) and out.depth.shape == (2, 1, 32, 32)
    assert out.triangle_id.shape == (2, 32, 32) and out.triangle_id.dtype == torch.long
    assert out.bary.shape == (2, 32, 32, 3)
    empty = ~out.mask
    assert torch.equal(out.rgb.permute(0, 2, 3, 1)[empty], bg.permute(0, 2, 3, 1)[empty])
    assert torch.allclose(out.bary.sum(-1)[out.mask], torch.ones(()), atol=1e-5)
    # image_size scales the intrinsics: the same face covers about (32/64)^2 the pixels at 32
    big = TorchRenderer().render(corners[None], tris, colours[:1], CAMERA, image_size=64)
    assert abs(big.mask.sum().item() / out.mask[0].sum().item() - 4) < 0.3


def test_lazy_images_match_the_covered_pixels_and_interpolate():
    """depth / triangle_id / bary are scattered from the covered pixels when first read; an
    output built from those images alone interpolates exactly like the renderer's own."""
    corners, tris, _ = tilted_plane_scene()
    colours = torch.rand(2, 4, 3)
    out = TorchRenderer().render(corners[None].expand(2, -1, -1), tris, colours, CAMERA.with_size(32))
    covered = out.covered
    assert covered is not None and covered.pixel_index.numel() == int(out.mask.sum())
    flat_ids = out.triangle_id.reshape(-1)
    assert torch.equal((flat_ids >= 0).nonzero().squeeze(1), covered.pixel_index)
    assert torch.equal(flat_ids[covered.pixel_index], covered.triangle_index)
    assert torch.equal(out.depth.reshape(-1)[covered.pixel_index], covered.depth)
    assert torch.equal(out.depth.reshape(-1)[flat_ids < 0], torch.zeros(int((flat_ids < 0).sum())))
    attrs = torch.rand(2, 4, 2)
    from_images = RenderOutput(out.rgba, out.depth, out.triangle_id, out.bary)
    assert torch.equal(interpolate(attrs, tris, out), interpolate(attrs, tris, from_images))
    assert torch.equal(from_images.mask, out.mask)
    with pytest.raises(ValueError, match="depth and triangle_id"):
        RenderOutput(out.rgba)


def test_bad_inputs_raise_one_line_errors():
    renderer = TorchRenderer()
    v, t, c = torch.zeros(1, 3, 3), torch.tensor([[0, 1, 2]]), torch.zeros(1, 3, 3)
    for args in [(v[0], t, c), (v, t.float(), c), (v, torch.tensor([[0, 1, 3]]), c), (v, t, torch.zeros(1, 4, 3))]:
        with pytest.raises(InputError) as err:
            renderer.render(*args, CAMERA)
        assert "\n" not in str(err.value) and "render" in str(err.value)
    with pytest.raises(InputError):
        renderer.render(v, t, c, CAMERA, background=(1.0, 2.0))
    with pytest.raises(ConfigError, match="renderer"):
        get_renderer("opengl")


def test_get_renderer():
    assert isinstance(get_renderer("torch"), TorchRenderer)
    assert get_renderer("torch", cull_backfaces=True).cull_backfaces
    if not (pytorch3d_available() and torch.cuda.is_available()):
        assert isinstance(get_renderer("auto"), TorchRenderer)
    if not pytorch3d_available():
        with pytest.raises(ConfigError, match="install pytorch3d"):
            get_renderer("pytorch3d")


# --------------------------------------------------------------------------------------
# Devices and backends
# --------------------------------------------------------------------------------------


def dense_scene(batch: int = 2, size: int = 96):
    """A displaced hemisphere grid (about 5k triangles) filling most of the image."""
    n = 50
    y, x = torch.meshgrid(torch.linspace(-0.9, 0.9, n), torch.linspace(-0.8, 0.8, n), indexing="ij")
    z = 0.5 * (1 - (x / 0.8) ** 2 - (y / 0.9) ** 2).clamp_min(0).sqrt() + 0.03 * torch.sin(9 * x) * torch.cos(7 * y)
    shifts = 0.05 * torch.randn(batch, 1, 3, generator=torch.Generator().manual_seed(0))
    vertices = torch.stack([x, y, z], -1).reshape(1, -1, 3) + shifts
    idx = torch.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    tris = torch.cat([torch.stack([a, b, d], -1).reshape(-1, 3), torch.stack([a, d, c], -1).reshape(-1, 3)])
    colours = torch.rand(batch, n * n, 3, generator=torch.Generator().manual_seed(1))
    return vertices, tris, colours, size


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_agree():
    vertices, tris, colours, size = dense_scene()
    renderer = TorchRenderer()
    cpu = renderer.render(vertices, tris, colours, CAMERA, size)
    gpu = renderer.render(vertices.cuda(), tris.cuda(), colours.cuda(), CAMERA, size)
    assert (cpu.triangle_id != gpu.triangle_id.cpu()).float().mean() < 1e-3
    same = cpu.triangle_id == gpu.triangle_id.cpu()
    assert torch.allclose(cpu.rgba.permute(0, 2, 3, 1)[same], gpu.rgba.cpu().permute(0, 2, 3, 1)[same], atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not pytorch3d_available(), reason="pytorch3d is not installed")
def test_parity_with_pytorch3d():
    from talkinghead.render.pytorch3d_backend import PyTorch3DRenderer

    vertices, tris, colours, size = dense_scene()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vertices, tris, colours = vertices.to(device), tris.to(device), colours.to(device)
    ours = TorchRenderer().render(vertices, tris, colours, CAMERA, size)
    theirs = PyTorch3DRenderer().render(vertices, tris, colours, CAMERA, size)
    agree = (ours.alpha == theirs.alpha).float().mean()
    assert agree >= 0.995
    both = ours.mask & theirs.mask
    assert both.sum() > 0.3 * size * size
    rgb_ours, rgb_theirs = ours.rgb.permute(0, 2, 3, 1)[both], theirs.rgb.permute(0, 2, 3, 1)[both]
    same_tri = (ours.triangle_id == theirs.triangle_id)[both]
    assert same_tri.float().mean() > 0.99
    assert (rgb_ours[same_tri] - rgb_theirs[same_tri]).abs().max() < 1e-3
    depth_gap = (ours.depth - theirs.depth)[:, 0][both][same_tri]
    assert depth_gap.abs().max() < 1e-3


def test_fill_holes_fills_enclosed_background_only_and_both_implementations_agree():
    from talkinghead.render.blend import fill_holes, fill_holes_by_dilation

    alpha = torch.zeros(2, 1, 12, 12)
    alpha[0, 0, 2:10, 2:10] = 1.0
    alpha[0, 0, 4:6, 4:6] = 0.0  # an enclosed hole (an eye): filled
    alpha[0, 0, 7:10, 6] = 0.0  # a slot open to the outside through row 9 -> 10: stays background
    expected = alpha.clone()
    expected[0, 0, 4:6, 4:6] = 1.0
    filled = fill_holes(alpha)
    assert torch.equal(filled, expected)
    assert torch.equal(filled[1], torch.zeros(1, 12, 12))  # empty image: all background
    # Random blobs: the one-pass labelling equals the iterated dilation, image by image.
    g = torch.Generator().manual_seed(0)
    masks = (torch.nn.functional.avg_pool2d(torch.rand(6, 1, 40, 40, generator=g), 5, 1, 2) > 0.5).float()
    assert torch.equal(fill_holes(masks), fill_holes_by_dilation(masks))
    assert (fill_holes(masks) >= masks).all()
