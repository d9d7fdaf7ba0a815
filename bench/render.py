"""Benchmark of the renderer: renders/s at 224 x 224 from coefficients to RGBA.

One render is the whole inference path of a frame: face model (shape and albedo bases, pose,
vertex normals, SH shading, projection of the landmarks) + rasterization + perspective-correct
colour interpolation, ``coeffs [B, 257] -> rgba [B, 4, 224, 224]``. The table also splits it
into the face model alone, the rasterization alone (projected vertices -> visible triangle per
pixel) and the renderer alone (vertices + colours -> RGBA), and gives forward + backward
(a 3DMM-fitting step: photometric loss through the render into the coefficients). "one person"
is coefficients -> RGBA for frames of one person (identity and texture shared, as at inference,
where the face model reuses the person's neutral shape and albedo and reads only the expression
basis per frame).

Meshes: (a) the procedural face model at about BFM size (~35k vertices / ~70k triangles) and
(b) the procedural face model at its default resolution.

    python bench/render.py                        # CPU, batch 1 and 8 (and CUDA when available)
    python bench/render.py --batch 1 --seconds 1  # quicker
    python bench/render.py --renderer pytorch3d   # another backend (where it imports)

Each figure comes after ``--warmup`` calls, iterating until ``--seconds`` have passed (at least
``--min-iters`` calls per block), split into ``--blocks`` blocks whose median rate is reported
(a slow stretch of a shared VM then does not set the figure); torch's thread count is left at
its default unless ``--threads`` is given (on a heavily shared machine ``--threads 1`` avoids
threads waiting on each other).
Numbers are throughput on this machine (wall clock, so they drop when it is shared), not tests.
"""

from __future__ import annotations

import argparse

import torch

from _timing import calls_per_second
from talkinghead.face.camera import Camera
from talkinghead.face.coeffs import COEFF_DIM, SLICES
from talkinghead.face.procedural import make_procedural_model
from talkinghead.render import get_renderer, rasterize

BFM_VERTICES = 35709


def random_coeffs(batch: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """Plausible frames: shape/texture within about one standard deviation, a moderate head
    pose, mild lighting variation, face centred at translation 0."""
    g = torch.Generator().manual_seed(seed)
    coeffs = torch.zeros(batch, COEFF_DIM)
    for name, scale in (("identity", 0.5), ("expression", 0.3), ("texture", 0.5), ("angles", 0.15), ("lighting", 0.1)):
        part = SLICES[name]
        coeffs[:, part] = scale * torch.randn(batch, part.stop - part.start, generator=g)
    return coeffs.to(device)


def bench_mesh(label: str, model, renderer, batch: int, device: torch.device, args) -> dict:
    """Figures for one face model at one batch size on one device."""
    camera = Camera(args.size)
    coeffs = random_coeffs(batch, device)
    triangles = model.triangles
    rate = lambda step: calls_per_second(step, device, args.seconds, args.min_iters, args.warmup, args.blocks)  # noqa: E731

    with torch.no_grad():
        geometry = model(coeffs, camera)
        pixels, depth = camera.project(geometry.vertices)
        coverage = renderer.render(geometry.vertices, triangles, geometry.colours, camera).alpha.mean().item()
        model_rate = rate(lambda: model(coeffs, camera))
        raster_rate = rate(lambda: rasterize(pixels, depth, triangles, args.size, args.size))
        render_rate = rate(lambda: renderer.render(geometry.vertices, triangles, geometry.colours, camera))

        def full():
            g = model(coeffs, camera)
            return renderer.render(g.vertices, triangles, g.colours, camera).rgba

        full_rate = rate(full)

        # The inference path: frames of one person (identity and texture shared by the batch), so
        # the face model reuses that person's neutral shape and albedo (MorphableModel caches them).
        person = coeffs.clone()
        for name in ("identity", "texture"):
            person[:, SLICES[name]] = person[:1, SLICES[name]]

        def one_person():
            g = model(person, camera)
            return renderer.render(g.vertices, triangles, g.colours, camera).rgba

        person_rate = rate(one_person)

    target = renderer.render(geometry.vertices, triangles, geometry.colours, camera).rgba.detach()
    fit_coeffs = (coeffs + 0.01).requires_grad_(True)

    def fit_step():
        g = model(fit_coeffs, camera)
        rgba = renderer.render(g.vertices, triangles, g.colours, camera).rgba
        loss = ((rgba - target) ** 2).mean()
        loss.backward()
        fit_coeffs.grad = None

    backward_rate = rate(fit_step)
    return {
        "mesh": label,
        "vertices": model.num_vertices,
        "triangles": model.num_triangles,
        "device": device.type,
        "batch": batch,
        "coverage": coverage,
        "model": model_rate * batch,
        "raster": raster_rate * batch,
        "render": render_rate * batch,
        "full": full_rate * batch,
        "person": person_rate * batch,
        "fwd+bwd": backward_rate * batch,
    }


HEADER = (
    f"{'mesh':<11} {'verts':>6} {'tris':>6} {'dev':>4} {'B':>2} {'cover':>5} |"
    f" {'model':>7} {'raster':>7} {'render':>7} {'coeffs->RGBA':>12} {'one person':>10} {'fwd+bwd':>8}   (images/s)"
)


def format_row(r: dict) -> str:
    return (
        f"{r['mesh']:<11} {r['vertices']:>6} {r['triangles']:>6} {r['device']:>4} {r['batch']:>2} {r['coverage']:>5.2f} |"
        f" {r['model']:>7.1f} {r['raster']:>7.1f} {r['render']:>7.1f} {r['full']:>12.1f} {r['person']:>10.1f} {r['fwd+bwd']:>8.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--size", type=int, default=224, help="image size in pixels")
    parser.add_argument("--device", nargs="+", default=None, help="cpu and/or cuda (default: cpu, plus cuda when available)")
    parser.add_argument("--renderer", default="torch", help="torch | pytorch3d | auto")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per figure")
    parser.add_argument("--min-iters", type=int, default=2, help="at least this many calls per block")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--blocks", type=int, default=5, help="split --seconds into blocks and report the median block")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, renderer={args.renderer}, {args.size}x{args.size}")
    meshes = [
        ("bfm-size", make_procedural_model(seed=0, target_vertices=BFM_VERTICES)),
        ("procedural", make_procedural_model(seed=0)),
    ]
    renderer = get_renderer(args.renderer)
    print(HEADER)
    print("-" * len(HEADER))
    for device_name in devices:
        device = torch.device(device_name)
        for label, model in meshes:
            model = model.to(device)
            for batch in args.batch:
                print(format_row(bench_mesh(label, model, renderer, batch, device, args)), flush=True)
    print("cover = mean alpha; model = face model only; raster = visibility only; render = renderer only;")
    print("coeffs->RGBA = model + renderer (no grad), every frame its own person; one person = the same with identity")
    print("and texture shared by the batch (inference: the person's shape and albedo are reused);")
    print("fwd+bwd = coeffs->RGBA with a photometric loss backward.")


if __name__ == "__main__":
    main()
