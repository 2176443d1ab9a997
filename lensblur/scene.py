"""A procedural 3-D demo scene (no downloads): image in linear radiance and exact metric depth.

The scene is ray cast through a pinhole camera whose field of view matches a 50 mm lens on a
36 mm sensor, so ``ThinLens(focal_length_mm=50)`` renders it with physically consistent blur:
a checkerboard floor, a textured back wall at 12 m, spheres at 1.4 m, 2.6 m, 4.5 m and 8 m, and a row
of small emissive "fairy lights" far away (radiance well above 1) whose blur shows the bokeh shape.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch

__all__ = ["make_scene", "SCENE_FOCAL_LENGTH_MM", "SCENE_SENSOR_WIDTH_MM"]

SCENE_FOCAL_LENGTH_MM = 50.0
SCENE_SENSOR_WIDTH_MM = 36.0
_CAMERA_HEIGHT_M = 0.45
_WALL_Z_M = 12.0


def _spheres(gen: torch.Generator):
    # centre (x, y, z) in metres (y down), radius, albedo
    spheres = [
        ((-0.25, 0.27, 1.4), 0.18, (0.85, 0.15, 0.10)),
        ((0.45, 0.15, 2.6), 0.30, (0.15, 0.70, 0.20)),
        ((-0.95, 0.00, 4.5), 0.45, (0.15, 0.30, 0.85)),
        ((1.60, -0.35, 8.0), 0.80, (0.90, 0.75, 0.20)),
    ]
    jitter = (torch.rand(len(spheres), 2, generator=gen) - 0.5) * 0.1
    return [((c[0] + float(j[0]), c[1], c[2] + float(j[1])), r, a) for (c, r, a), j in zip(spheres, jitter)]


def make_scene(height: int = 240, width: int = 360, seed: int = 0, *,
               device=None, dtype=torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """Render the demo scene.

    Args:
        height, width: image size in pixels (>= 8).
        seed: jitters object placement and light colours (deterministic).

    Returns:
        ``(image, depth)``: ``(1, 3, H, W)`` linear radiance (highlights exceed 1) and
        ``(1, 1, H, W)`` depth along the optical axis in metres (about 1.2 m ... 12 m).

    Example:
        >>> img, depth = make_scene(48, 64)
        >>> img.shape, depth.shape, bool(depth.min() > 0)
        (torch.Size([1, 3, 48, 64]), torch.Size([1, 1, 48, 64]), True)
    """
    if height < 8 or width < 8:
        raise ValueError(f"`height` and `width` must be >= 8, got {height}x{width}")
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    tan_half = (SCENE_SENSOR_WIDTH_MM / 2) / SCENE_FOCAL_LENGTH_MM
    xs = ((torch.arange(width, dtype=f64) + 0.5) / width * 2 - 1) * tan_half
    ys = ((torch.arange(height, dtype=f64) + 0.5) - height / 2) / (width / 2) * tan_half
    ry, rx = torch.meshgrid(ys, xs, indexing="ij")
    rz = torch.ones_like(rx)  # rays (rx, ry, 1): the hit parameter t is the depth along the axis

    # back wall
    depth = torch.full_like(rx, _WALL_Z_M)
    wx, wy = rx * _WALL_Z_M, ry * _WALL_Z_M
    bricks = ((torch.floor(wy / 0.35) + torch.floor(wx / 0.7 + 0.5 * (torch.floor(wy / 0.35) % 2))) % 2)
    mortar = ((wy / 0.35) % 1 < 0.08) | ((wx / 0.7 + 0.5 * (torch.floor(wy / 0.35) % 2)) % 1 < 0.04)
    wall = torch.stack([0.55 + 0.15 * bricks, 0.32 + 0.08 * bricks, 0.25 + 0.05 * bricks])
    wall = torch.where(mortar, torch.full_like(wall, 0.7), wall)
    color = wall * 0.8
    normal = torch.stack([torch.zeros_like(rx), torch.zeros_like(rx), -torch.ones_like(rx)])

    # floor y = camera height
    t_floor = torch.where(ry > 1e-9, _CAMERA_HEIGHT_M / ry.clamp_min(1e-9), torch.full_like(ry, math.inf))
    hit = t_floor < depth
    fx, fz = rx * t_floor, t_floor
    checker = ((torch.floor(fx / 0.5) + torch.floor(fz / 0.5)) % 2)
    floor_col = torch.stack([0.75 - 0.55 * checker, 0.72 - 0.52 * checker, 0.65 - 0.45 * checker])
    color = torch.where(hit, floor_col, color)
    normal = torch.where(hit, torch.stack([torch.zeros_like(rx), -torch.ones_like(rx), torch.zeros_like(rx)]),
                         normal)
    depth = torch.where(hit, t_floor, depth)

    # spheres
    for (cx, cy, cz), r, albedo in _spheres(gen):
        # |t d - c|^2 = r^2 with d = (rx, ry, 1)
        a = rx * rx + ry * ry + 1
        b = -2 * (rx * cx + ry * cy + cz)
        c = cx * cx + cy * cy + cz * cz - r * r
        disc = b * b - 4 * a * c
        t = (-b - torch.sqrt(disc.clamp_min(0))) / (2 * a)
        hit = (disc > 0) & (t > 0) & (t < depth)
        px, py, pz = rx * t - cx, ry * t - cy, t - cz
        n = torch.stack([px, py, pz]) / r
        stripes = 0.85 + 0.15 * torch.cos(12 * torch.atan2(px, pz))
        col = torch.tensor(albedo, dtype=f64).view(3, 1, 1) * stripes
        color = torch.where(hit, col, color)
        normal = torch.where(hit, n, normal)
        depth = torch.where(hit, t, depth)

    light = torch.tensor([-0.4, -0.8, -0.45], dtype=f64)
    light = light / light.norm()
    lambert = (normal * light.view(3, 1, 1)).sum(0).clamp_min(0)
    radiance = color * (0.25 + 0.9 * lambert)

    # fairy lights: small emissive spheres far away (highlights for bokeh)
    n_lights = 9
    hue = torch.rand(n_lights, generator=gen)
    for i in range(n_lights):
        lx = -2.6 + 5.2 * i / (n_lights - 1)
        lz = 9.5 + 0.6 * math.sin(i)
        ly = -0.75 + 0.2 * math.cos(1.7 * i)
        rr = 0.035
        a = rx * rx + ry * ry + 1
        b = -2 * (rx * lx + ry * ly + lz)
        c = lx * lx + ly * ly + lz * lz - rr * rr
        disc = b * b - 4 * a * c
        t = (-b - torch.sqrt(disc.clamp_min(0))) / (2 * a)
        # at least one pixel per light so it survives small renders: nearest pixel to its centre
        u = int(round((lx / lz / tan_half + 1) / 2 * width - 0.5))
        v = int(round(ly / lz / tan_half * (width / 2) + height / 2 - 0.5))
        hit = (disc > 0) & (t > 0) & (t < depth)
        if 0 <= u < width and 0 <= v < height and lz < depth[v, u]:
            hit[v, u] = True
            t = torch.where(hit & (disc <= 0), torch.full_like(t, lz), t)
        h = float(hue[i])
        rgb = torch.tensor([1.0, 0.55 + 0.45 * h, 0.25 + 0.5 * (1 - h)], dtype=f64).view(3, 1, 1) * 12.0
        radiance = torch.where(hit, rgb, radiance)
        depth = torch.where(hit, t, depth)

    image = radiance[None].to(device=device, dtype=dtype)
    depth = depth[None, None].to(device=device, dtype=dtype)
    return image.contiguous(), depth.contiguous()
