"""Ground-truth scenes for :mod:`benchmarks.groundtruth`: emission-only Mitsuba 3 scenes.

Every surface is an emitter with a textured radiance and a black BSDF, and the integrator stops
at the first hit (``path`` with ``max_depth=1``), so a pixel is the average of the radiance its
rays see: no light transport noise, only the sampling of the pixel area and of the lens aperture
(stratified, so it converges fast).

The camera sits at the origin and looks down ``+z``; world ``+x`` appears on the left of the
image and ``+y`` at the top (Mitsuba's ``look_at`` convention), and the z-depth of a point is its
``z`` coordinate.  Shapes are placed with :func:`at_pixel` in image coordinates and depth.

Lens matching (the derivation is in ``docs/accuracy.rst``): Mitsuba's ``thinlens`` has an
aperture radius ``A`` and a focus distance ``S1`` but no focal length; a point at z-depth ``S2``
is spread into a disk of diameter ``2 A |S2 - S1| / S2`` on the focal plane, which spans
``2 S1 tan(fov/2)``.  With ``tan(fov/2) = sensor / (2 f)`` our :class:`lensblur.ThinLens` gives
the same circle of confusion at every depth when ``N = f S1 / (2 A (S1 - f))``
(:func:`f_number_for`).

This module imports Mitsuba only inside the functions that build scenes, so the lens formulas are
usable (and tested) without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

WIDTH, HEIGHT = 300, 200
FOCAL_MM = 50.0
SENSOR_MM = 36.0
TAN_HALF_FOV = SENSOR_MM / (2.0 * FOCAL_MM)          # horizontal
FOV_DEG = math.degrees(2.0 * math.atan(TAN_HALF_FOV))
#: scored region: the frame less this margin on every side (the real lens sees past the frame
#: edge, no image-space method can); at least the largest blur radius of any scene
MARGIN_PX = 24
#: largest circle-of-confusion diameter (px) in the frame, one aperture per entry
COC_TARGETS_PX = (10.0, 20.0, 40.0)


# --------------------------------------------------------------------------------------------
# lens matching


def mitsuba_coc_px(depth_m, aperture_radius_m: float, focus_distance_m: float,
                   width_px: int = WIDTH, tan_half_fov: float = TAN_HALF_FOV):
    """Diameter in pixels of Mitsuba's ``thinlens`` blur disk for a point at z-depth ``depth_m``.

    The disk of diameter ``2 A |S2 - S1| / S2`` on the focal plane (at ``S1``) is measured against
    the focal plane's width ``2 S1 tan(fov/2)``, which the image's ``width_px`` pixels span.
    """
    z = np.asarray(depth_m, dtype=np.float64)
    disk = 2.0 * aperture_radius_m * np.abs(z - focus_distance_m) / z
    return disk / (2.0 * focus_distance_m * tan_half_fov) * width_px


def f_number_for(aperture_radius_m: float, focus_distance_m: float, focal_mm: float = FOCAL_MM) -> float:
    """The f-number ``N = f S1 / (2 A (S1 - f))`` that makes :class:`lensblur.ThinLens` (focal
    length ``focal_mm``, sensor ``2 f tan(fov/2)``) blur like Mitsuba's ``thinlens``."""
    f = focal_mm / 1000.0
    return f * focus_distance_m / (2.0 * aperture_radius_m * (focus_distance_m - f))


def aperture_radius_for(max_coc_px: float, depth_min_m: float, depth_max_m: float,
                        focus_distance_m: float) -> float:
    """Aperture radius (m) whose largest blur over depths ``[depth_min_m, depth_max_m]`` is
    ``max_coc_px`` pixels (the blur grows monotonically away from the focus distance)."""
    per_metre = max(float(mitsuba_coc_px(d, 1.0, focus_distance_m)) for d in (depth_min_m, depth_max_m))
    return max_coc_px / per_metre


# --------------------------------------------------------------------------------------------
# textures (procedural, seeded, linear radiance)


def texture(seed: int, res: int = 256, lo: float = 0.05, hi: float = 1.0) -> np.ndarray:
    """A ``(res, res, 3)`` float32 radiance texture: a mosaic of coloured cells with sharp edges,
    a smooth colour gradient, and patches of fine stripes and dots (detail that blur removes)."""
    rng = np.random.default_rng(seed)
    cells = int(rng.integers(6, 12))
    mosaic = rng.uniform(0.15, 1.0, size=(cells, cells, 3))
    idx = (np.arange(res) * cells) // res
    img = mosaic[idx][:, idx]
    yy, xx = np.meshgrid(np.linspace(0, 1, res), np.linspace(0, 1, res), indexing="ij")
    grad = np.stack([0.6 + 0.4 * xx, 0.6 + 0.4 * yy, 1.0 - 0.4 * xx * yy], -1)
    img = img * grad
    for _ in range(3):                                   # stripe patches
        y0, x0 = rng.integers(0, res * 3 // 4, size=2)
        s = res // 5
        period = float(rng.uniform(3, 9))
        ang = float(rng.uniform(0, math.pi))
        yy2, xx2 = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
        stripes = 0.5 + 0.5 * np.sign(np.sin((xx2 * math.cos(ang) + yy2 * math.sin(ang)) * 2 * math.pi / period))
        img[y0:y0 + s, x0:x0 + s] *= (0.25 + 0.75 * stripes)[..., None]
    for _ in range(12):                                  # bright dots
        cy, cx = rng.integers(0, res, size=2)
        r = float(rng.uniform(1.5, 4))
        d2 = (np.arange(res)[:, None] - cy) ** 2 + (np.arange(res)[None, :] - cx) ** 2
        img[d2 <= r * r] = rng.uniform(0.7, 1.0, size=3)
    return np.clip(lo + (hi - lo) * img, lo, hi).astype(np.float32)


# --------------------------------------------------------------------------------------------
# scene description


def at_pixel(u: float, v: float, z: float, width: int = WIDTH, height: int = HEIGHT) -> Tuple[float, float, float]:
    """World point at z-depth ``z`` seen by the pinhole at pixel coordinates ``(u, v)`` (x to the
    right, y down, pixel centres at ``i + 0.5``)."""
    scale = 2.0 * z * TAN_HALF_FOV / width              # metres per pixel at depth z
    return (-(u - width / 2.0) * scale, -(v - height / 2.0) * scale, z)


def px_to_m(px: float, z: float, width: int = WIDTH) -> float:
    """Length in metres at depth ``z`` of ``px`` pixels."""
    return px * 2.0 * z * TAN_HALF_FOV / width


@dataclass
class Quad:
    """An emissive textured parallelogram: ``centre + a u_half + b v_half`` for ``a, b`` in [-1, 1]."""
    centre: Sequence[float]
    u_half: Sequence[float]
    v_half: Sequence[float]
    seed: int
    gain: float = 1.0
    radiance: Optional[Sequence[float]] = None     #: constant radiance instead of a texture


@dataclass
class Sphere:
    centre: Sequence[float]
    radius: float
    radiance: Sequence[float]


@dataclass
class Rod:
    """An emissive cylinder from ``p0`` to ``p1`` (a thin structure)."""
    p0: Sequence[float]
    p1: Sequence[float]
    radius: float
    radiance: Sequence[float]


@dataclass
class Scene:
    name: str
    title: str
    focus_distance_m: float
    shapes: List[object] = field(default_factory=list)
    coc_targets_px: Sequence[float] = COC_TARGETS_PX
    spp_truth: int = 64           #: samples per pixel of each of the two truth halves
    spp_input: int = 256          #: samples per pixel of the pinhole input


def fronto(z: float, u0: float, v0: float, u1: float, v1: float, seed: int, gain: float = 1.0) -> Quad:
    """A fronto-parallel quad at depth ``z`` covering pixels ``[u0, u1] x [v0, v1]`` of the pinhole."""
    a, b = at_pixel(u0, v0, z), at_pixel(u1, v1, z)
    centre = ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2, z)
    return Quad(centre, ((b[0] - a[0]) / 2, 0.0, 0.0), (0.0, (b[1] - a[1]) / 2, 0.0), seed, gain)


def wall(z: float, seed: int, extra_px: float = 120.0) -> Quad:
    """A fronto-parallel quad at depth ``z`` that fills the frame plus ``extra_px`` on every side."""
    return fronto(z, -extra_px, -extra_px, WIDTH + extra_px, HEIGHT + extra_px, seed)


def _tilted_plane(z0: float, angle_deg: float, seed: int) -> Quad:
    """A plane through ``(0, 0, z0)`` turned by ``angle_deg`` about the vertical axis: its depth
    grows from the right of the frame to the left; it covers the frame with margin."""
    phi = math.radians(angle_deg)
    d = np.array([math.cos(phi), 0.0, math.sin(phi)])    # in-plane horizontal direction
    t_edge = TAN_HALF_FOV * 1.45                         # beyond the frame edge (margin)
    s_left = t_edge * z0 / (math.cos(phi) - t_edge * math.sin(phi))
    s_right = -t_edge * z0 / (math.cos(phi) + t_edge * math.sin(phi))
    s_c, s_half = (s_left + s_right) / 2, (s_left - s_right) / 2
    centre = np.array([0.0, 0.0, z0]) + s_c * d
    z_far = z0 + s_left * math.sin(phi)
    height_half = z_far * TAN_HALF_FOV * HEIGHT / WIDTH * 1.6
    return Quad(tuple(centre), tuple(s_half * d), (0.0, height_half, 0.0), seed)


def _lights_px(specs, z: float, radiance) -> List[Quad]:
    """Small bright square lights ``(u0, v0, size)`` in pixels, at depth ``z``.  Their edges lie on
    pixel boundaries, so no pinhole pixel mixes a light with what is behind it: every pixel of
    the input has the depth of what it shows (a mixed pixel at the rim of a light, given the
    background's depth by its centre ray, would spread a 40x radiance over the background's
    blur and swamp what these scenes measure)."""
    out = []
    for u0, v0, size in specs:
        q = fronto(z, u0, v0, u0 + size, v0 + size, seed=0)
        q.radiance = tuple(radiance)
        out.append(q)
    return out


def build_scenes() -> List[Scene]:
    """The scenes, each stressing one thing (see ``docs/accuracy.rst``)."""
    scenes = []

    # 1. one fronto-parallel plane: every method must match the truth within its noise
    scenes.append(Scene("plane", "single fronto-parallel plane", 2.0, [wall(3.0, seed=1)]))

    # 2. a sharp in-focus object over a blurred background (no background may bleed into it)
    s = Scene("sharp_front", "in-focus object over a blurred background", 1.5,
              [wall(5.0, seed=2),
               fronto(1.5, 95, 55, 185, 150, seed=3),
               Sphere(at_pixel(215, 85, 1.5), px_to_m(28, 1.5), (0.9, 0.35, 0.2))])
    scenes.append(s)

    # 3. a blurred near object over a sharp background (partial occlusion: see behind its edge)
    scenes.append(Scene("blurred_front", "blurred near object over a sharp background", 4.0,
                        [wall(4.0, seed=4),
                         fronto(1.2, 90, 60, 180, 145, seed=5),
                         Sphere(at_pixel(215, 90, 1.2), px_to_m(26, 1.2), (0.25, 0.5, 0.95))]))

    # 4. many depths at once with small, very bright lights (bokeh disks, energy)
    lights = (_lights_px([(138, 58, 4), (255, 40, 3), (134, 149, 3)], 7.0, (40.0, 36.0, 30.0))
              + _lights_px([(73, 68, 4)], 4.5, (40.0, 40.0, 40.0))
              + _lights_px([(203, 133, 4)], 3.0, (36.0, 40.0, 40.0))
              + _lights_px([(129, 99, 3)], 2.0, (40.0, 40.0, 40.0))
              + _lights_px([(73, 148, 4)], 1.4, (30.0, 40.0, 36.0)))
    scenes.append(Scene("lights", "many depths, small bright lights", 2.5,
                        [wall(7.5, seed=6),
                         fronto(5.0, 30, 30, 120, 110, seed=7),
                         fronto(3.5, 150, 95, 260, 175, seed=8),
                         fronto(2.5, 175, 25, 245, 80, seed=9),
                         fronto(1.6, 40, 120, 110, 185, seed=10)] + lights, spp_truth=484))

    # 5. thin structures: near rods of 2-8 px width blurred over a sharp background
    z_rod = 1.3
    rods = []
    for i, (u, w_px) in enumerate([(70, 2.0), (110, 3.0), (150, 5.0), (190, 8.0)]):
        rods.append(Rod(at_pixel(u, -40, z_rod), at_pixel(u + 25, HEIGHT + 40, z_rod),
                        px_to_m(w_px / 2, z_rod), (0.95, 0.9 - 0.2 * i, 0.3 + 0.2 * i)))
    rods.append(Rod(at_pixel(-40, 150, z_rod), at_pixel(WIDTH + 40, 120, z_rod), px_to_m(1.5, z_rod),
                    (0.2, 0.9, 0.4)))
    scenes.append(Scene("thin", "thin near rods over a sharp background", 3.5, [wall(3.5, seed=11)] + rods))

    # 6. a tilted plane: continuous depth, blur from zero to the maximum across the frame
    scenes.append(Scene("tilted", "tilted plane", 3.0, [_tilted_plane(3.0, 50.0, seed=12)]))

    # 7. point lights at six depths on black: the bokeh disk's size checks the lens matching
    pts = []
    for i, z in enumerate([1.4, 1.8, 2.2, 3.2, 4.5, 7.0]):
        pts += _lights_px([(44 + 42 * i, 69 if i % 2 else 129, 3)], z, (40.0, 40.0, 40.0))
    black = wall(10.0, seed=0)
    black.gain = 0.0                                     # a non-emitting wall: finite depth, no light
    scenes.append(Scene("bokeh", "point lights at six depths on black", 2.5, [black] + pts,
                        coc_targets_px=(10.0, 40.0), spp_truth=484))
    return scenes


SCENE_NAMES = [s.name for s in build_scenes()]


# --------------------------------------------------------------------------------------------
# Mitsuba scene dictionaries (Mitsuba imported lazily)

_BLACK = {"type": "diffuse", "reflectance": {"type": "rgb", "value": 0.0}}


def _quad_transform(mi, q: Quad):
    """Rectangle ``[-1, 1]^2`` (normal +z) mapped onto the quad, its normal facing the camera."""
    u, v, c = np.asarray(q.u_half, float), np.asarray(q.v_half, float), np.asarray(q.centre, float)
    n = np.cross(u, v)
    n /= np.linalg.norm(n)
    if np.dot(n, c) > 0:                 # an area emitter emits on its normal's side only
        v, n = -v, -n
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = u, v, n, c
    return mi.ScalarTransform4f(m.tolist())


def mitsuba_dict(scene: Scene, camera: str, spp: int, seed: int = 0, aperture_radius_m: float = 0.0):
    """The Mitsuba scene dictionary of ``scene`` seen by a ``"pinhole"`` or ``"thinlens"`` camera."""
    import mitsuba as mi
    sensor = {"type": "perspective" if camera == "pinhole" else "thinlens",
              "fov": FOV_DEG, "fov_axis": "x", "near_clip": 0.01,
              "to_world": mi.ScalarTransform4f().look_at(origin=[0, 0, 0], target=[0, 0, 1], up=[0, 1, 0]),
              "film": {"type": "hdrfilm", "width": WIDTH, "height": HEIGHT, "rfilter": {"type": "box"},
                       "pixel_format": "rgb", "component_format": "float32"},
              "sampler": {"type": "multijitter", "sample_count": spp, "seed": seed}}
    if camera == "thinlens":
        sensor.update(aperture_radius=aperture_radius_m, focus_distance=scene.focus_distance_m)
    d = {"type": "scene", "integrator": {"type": "path", "max_depth": 1}, "sensor": sensor}
    for i, shp in enumerate(scene.shapes):
        if isinstance(shp, Quad) and shp.gain == 0.0:
            d[f"quad{i}"] = {"type": "rectangle", "to_world": _quad_transform(mi, shp), "bsdf": _BLACK}
        elif isinstance(shp, Quad):
            if shp.radiance is not None:
                radiance = {"type": "rgb", "value": [shp.gain * r for r in shp.radiance]}
            else:
                radiance = {"type": "bitmap", "data": mi.TensorXf(texture(shp.seed) * shp.gain), "raw": True,
                            "filter_type": "bilinear", "wrap_mode": "clamp"}
            d[f"quad{i}"] = {"type": "rectangle", "to_world": _quad_transform(mi, shp), "bsdf": _BLACK,
                             "emitter": {"type": "area", "radiance": radiance}}
        elif isinstance(shp, Sphere):
            d[f"sphere{i}"] = {"type": "sphere", "center": list(shp.centre), "radius": shp.radius, "bsdf": _BLACK,
                               "emitter": {"type": "area", "radiance": {"type": "rgb", "value": list(shp.radiance)}}}
        elif isinstance(shp, Rod):
            d[f"rod{i}"] = {"type": "cylinder", "p0": list(shp.p0), "p1": list(shp.p1), "radius": shp.radius,
                            "bsdf": _BLACK,
                            "emitter": {"type": "area", "radiance": {"type": "rgb", "value": list(shp.radiance)}}}
        else:
            raise TypeError(f"unknown shape {shp!r}")
    return d
