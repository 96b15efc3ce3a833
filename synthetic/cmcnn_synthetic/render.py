"""Triangle rasterisation (pyrender + OSMesa) and a Kinect-like sensor model.

The paper's RGB-D data come from 3-D scans rendered to depth maps (BU-3DFE,
Bosphorus) and from Kinect recordings (VT-KFER, CCZU-FER; Section IV-A).
This module produces the Kinect variant: a colour image and a depth image
registered to it, both from one pinhole camera, then degrades the depth the
way a structured-light sensor does:

* axial noise with sigma = ``noise_mm_at_1m * (z / 1 m)^2`` (Khoshelham and
  Elberink 2012 report ~1.5 mm at 1 m growing quadratically),
* disparity quantisation (steps of ``quant_mm_at_1m * (z / 1 m)^2``),
* holes (0): projector shadows beside foreground edges, flying pixels at
  depth discontinuities, grazing surfaces, random dropouts, out-of-range.

That fixed model (``cmcnn-synth --depth-noise classic``, the default) is one
sensor in one condition. ``--depth-noise kinect`` draws the sensor per frame
(:func:`cmcnn_synthetic.scene.random_sensor`) and turns on what the fixed
model leaves out, so a model cannot learn one noise signature:

* spatially correlated noise (``correlated_noise``, ``correlation_px``):
  Kinect v1 matches the speckle pattern over ~9x9 pixel windows, so
  neighbouring readings share their error (ripples, not white noise),
* lateral smoothing within surfaces (``smooth_px``): the same window
  rounds off fine relief (lip and nose edges),
* wider silhouette holes (``edge_band_px``) and larger dropout blobs
  (``blob_scale``), with noise level, hole and dropout rates drawn per frame.

With the new fields at their defaults the output is unchanged.

Rendering uses pyrender's OpenGL rasteriser with a z-buffer on the OSMesa
software context, so it runs headless without a GPU. ``PYOPENGL_PLATFORM``
is set to ``osmesa`` before pyrender is imported unless the caller chose a
platform (e.g. ``egl`` on a GPU machine).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import cv2
import numpy as np

logger = logging.getLogger(__name__)

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

# Camera frame used throughout: OpenCV convention, x right, y down, z forward (metres).

DEPTH_NOISE_MODELS: Tuple[str, ...] = ("classic", "kinect")


class RenderError(ValueError):
    """A render request is invalid or the OpenGL backend failed."""


@dataclass(frozen=True)
class CameraSpec:
    """Pinhole camera shared by the colour and the registered depth image.

    Defaults are the nominal Kinect v1 colour intrinsics at 640x480.
    Pixel centres are at integer coordinates (OpenCV convention):
    ``u = fx * X / Z + cx``.
    """

    width: int = 640
    height: int = 480
    fx: float = 525.0
    fy: float = 525.0
    cx: float = 319.5
    cy: float = 239.5

    def __post_init__(self) -> None:
        if self.width < 16 or self.height < 16 or self.width > 8192 or self.height > 8192:
            raise RenderError(f"camera size must be 16..8192 pixels, got {self.width}x{self.height}")
        if self.fx <= 0 or self.fy <= 0:
            raise RenderError(f"focal lengths must be positive, got fx={self.fx}, fy={self.fy}")

    @property
    def intrinsics(self) -> Tuple[float, float, float, float]:
        """``(fx, fy, cx, cy)``."""
        return (self.fx, self.fy, self.cx, self.cy)

    @property
    def matrix(self) -> np.ndarray:
        """3x3 camera matrix K."""
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], dtype=np.float64)

    def scaled(self, factor: float) -> "CameraSpec":
        """The same camera at another resolution (pixel-centre consistent).

        Raises:
            RenderError: the result is too small or too large.
        """
        w, h = int(round(self.width * factor)), int(round(self.height * factor))
        return CameraSpec(width=w, height=h, fx=self.fx * factor, fy=self.fy * factor,
                          cx=(self.cx + 0.5) * factor - 0.5, cy=(self.cy + 0.5) * factor - 0.5)

    def project(self, points: np.ndarray) -> np.ndarray:
        """Project ``(N, 3)`` camera-frame points to ``(N, 2)`` pixel coordinates."""
        z = np.maximum(points[:, 2], 1e-9)
        return np.stack([self.fx * points[:, 0] / z + self.cx, self.fy * points[:, 1] / z + self.cy], axis=1)

    def to_dict(self) -> Dict[str, float]:
        return {"width": self.width, "height": self.height, "fx": self.fx, "fy": self.fy,
                "cx": self.cx, "cy": self.cy}


@dataclass(frozen=True)
class LightSpec:
    """Scene lighting: a key light, a weaker fill from the other side, ambient.

    Attributes:
        azimuth_deg: key light direction left/right of the camera axis
            (positive: light comes from the image right).
        elevation_deg: key light direction above the camera axis (positive: from above).
        intensity: key light intensity (pyrender units; ~2-4 is indoor-like).
        colour: light colour (linear RGB, ~1).
        ambient: ambient level (0..1).
        fill: fill light intensity as a fraction of the key.
    """

    azimuth_deg: float = 15.0
    elevation_deg: float = 25.0
    intensity: float = 3.0
    colour: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    ambient: float = 0.3
    fill: float = 0.35


@dataclass(frozen=True)
class BackgroundSpec:
    """A room behind the faces: a (tilted) wall, optional floor, clutter.

    Everything is drawn from ``seed`` so a bag keeps the same background
    across frames.

    Attributes:
        seed: randomness of the textures and clutter.
        wall_distance_m: depth of the wall on the optical axis.
        wall_yaw_deg: wall rotation about the vertical axis.
        floor_height_m: camera height above the floor (None = no floor visible).
        clutter: number of objects (posters, shelves, boxes).
        min_object_depth_m: clutter never comes closer than this (keeps it behind faces).
        palette: ``"muted"`` (greys, woods, faded prints) or ``"wide"``
            (dark to white walls, saturated tints and objects).
    """

    seed: int = 0
    wall_distance_m: float = 3.0
    wall_yaw_deg: float = 0.0
    floor_height_m: Optional[float] = 1.2
    clutter: int = 6
    min_object_depth_m: float = 2.2
    palette: str = "muted"


@dataclass(frozen=True)
class SensorSpec:
    """Kinect-like degradation of the ideal colour and depth images.

    Attributes:
        noise_mm_at_1m: axial depth noise sigma at 1 m (grows with z^2).
        quant_mm_at_1m: disparity quantisation step at 1 m (grows with z^2).
        min_range_m / max_range_m: readings outside are holes (0).
        baseline_m: IR projector to camera baseline (projector shadows).
        edge_hole_prob: probability of a hole at a depth discontinuity pixel.
        grazing_cos: surfaces seen more obliquely than this cosine drop out.
        dropout_fraction: fraction of the image lost in random blobs.
        colour_noise: colour sensor noise sigma (8-bit levels).
        colour_blur: Gaussian blur sigma of the colour optics (pixels).
        auto_exposure: range of the target mean grey level; the colour
            camera's gain brings the frame's mean there (gain 0.6..2.0),
            as a Kinect's auto-exposure would under dim or bright light.
        ideal: skip all degradation (exact depth in mm, clean colour).
        correlated_noise: share (0..1) of the axial noise variance that is
            spatially correlated (Kinect window matching; 0 = white noise).
        correlation_px: sigma of that correlation in pixels at 640 px width.
        smooth_px: lateral smoothing of depth within surfaces (sigma in pixels
            at 640 px width; 0 = none).
        edge_band_px: extra width of the hole band around depth edges.
        blob_scale: size multiplier of the random dropout blobs.
        highlight_percentile: if > 0, the auto-exposure gain is also capped
            so this percentile of the grey image stays below 250 (highlight
            protection; keeps a light face in a dark room from burning out).
    """

    noise_mm_at_1m: float = 1.5
    quant_mm_at_1m: float = 2.85
    min_range_m: float = 0.45
    max_range_m: float = 4.5
    baseline_m: float = 0.075
    edge_hole_prob: float = 0.6
    grazing_cos: float = 0.12
    dropout_fraction: float = 0.004
    colour_noise: float = 2.0
    colour_blur: float = 0.6
    auto_exposure: Tuple[float, float] = (100.0, 135.0)
    ideal: bool = False
    correlated_noise: float = 0.0
    correlation_px: float = 2.0
    smooth_px: float = 0.0
    edge_band_px: int = 0
    blob_scale: float = 1.0
    highlight_percentile: float = 0.0


@dataclass
class MeshInstance:
    """One posed mesh for the rasteriser (camera frame, metres)."""

    vertices: np.ndarray           # (V, 3) float32, OpenCV camera frame
    triangles: np.ndarray          # (F, 3) int32
    albedo: np.ndarray             # (V, 3) float32 linear RGB
    normals: Optional[np.ndarray] = None
    roughness: float = 0.65
    glossy_triangles: Optional[np.ndarray] = None   # boolean mask of triangles drawn glossy (eyes)


# ------------------------------------------------------------------ rasteriser

_CV_TO_GL = np.diag([1.0, -1.0, -1.0]).astype(np.float32)


class _RendererCache(threading.local):
    def __init__(self) -> None:
        self.renderers: Dict[Tuple[int, int], object] = {}


_CACHE = _RendererCache()


def _pyrender():
    try:
        import pyrender
    except Exception as exc:  # ImportError, or OpenGL platform errors raised at import
        raise RenderError(
            "pyrender with a working OpenGL platform is required for synthetic rendering: "
            "apt-get install libosmesa6; pip install pyrender 'pyopengl>=3.1.7' "
            f"(PYOPENGL_PLATFORM={os.environ.get('PYOPENGL_PLATFORM')}): {exc}") from exc
    return pyrender


def _stable_program_cache(pyrender_module):
    """pyrender's shader cache keyed without the OpenGL context object.

    pyrender keys compiled shader programs by
    ``OpenGL.contextdata.getContext()``; with OSMesa and PyOpenGL >= 3.1.7
    that returns a new wrapper object on every call, so every frame
    recompiled the shaders (~35 ms) and leaked the old programs. Each
    renderer here owns exactly one context, so the context can be left out
    of the key.
    """
    from pyrender.shader_program import ShaderProgram, ShaderProgramCache

    class StableProgramCache(ShaderProgramCache):
        def get_program(self, vertex_shader, fragment_shader, geometry_shader=None, defines=None):
            defines = dict(defines or {})
            names = [os.path.basename(f) for f in (vertex_shader, fragment_shader, geometry_shader) if f]
            key = tuple(sorted([(n, 1) for n in names] + list(defines.items())))
            if key not in self._program_cache:
                paths = [os.path.join(self.shader_dir, f) if f else None
                         for f in (vertex_shader, fragment_shader, geometry_shader)]
                self._program_cache[key] = ShaderProgram(vertex_shader=paths[0], fragment_shader=paths[1],
                                                         geometry_shader=paths[2], defines=defines)
            return self._program_cache[key]

    return StableProgramCache()


def _offscreen(width: int, height: int):
    key = (width, height)
    r = _CACHE.renderers.get(key)
    if r is None:
        pyrender = _pyrender()
        try:
            r = pyrender.OffscreenRenderer(width, height)
            # The inner renderer exists once the context has been made.
            r._renderer._program_cache = _stable_program_cache(pyrender)
        except Exception as exc:
            raise RenderError(f"cannot create an offscreen OpenGL context: {exc}") from exc
        _CACHE.renderers[key] = r
    return r


def _look_rotation(direction_gl: np.ndarray) -> np.ndarray:
    """4x4 pose whose -z axis points along ``direction_gl`` (pyrender light convention)."""
    z = -direction_gl / np.linalg.norm(direction_gl)
    up = np.array([0.0, 1.0, 0.0]) if abs(z[1]) < 0.95 else np.array([1.0, 0.0, 0.0])
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2] = x, y, z
    return pose


def _light_direction_gl(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """Direction the light travels, in the GL camera frame (camera looks along -z)."""
    az, el = np.radians(azimuth_deg), np.radians(elevation_deg)
    # Position of the light on a unit sphere around the scene (GL: +x right, +y up, +z to camera).
    pos = np.array([np.sin(az) * np.cos(el), np.sin(el), np.cos(az) * np.cos(el)])
    return -pos


def _mesh_region(meshes: Sequence[MeshInstance], camera: CameraSpec, pad: int = 2
                 ) -> Optional[Tuple[int, int, int, int]]:
    """Pixel bounding box ``(x0, y0, w, h)`` of all meshes in the image, or None if off-screen."""
    lo = np.array([np.inf, np.inf])
    hi = np.array([-np.inf, -np.inf])
    for inst in meshes:
        v = inst.vertices
        front = v[:, 2] > 0.01
        if not front.any():
            continue
        uv = camera.project(v[front].astype(np.float64))
        lo = np.minimum(lo, uv.min(axis=0))
        hi = np.maximum(hi, uv.max(axis=0))
    if not np.all(np.isfinite(lo)):
        return None
    x0 = int(max(0, np.floor(lo[0]) - pad))
    y0 = int(max(0, np.floor(lo[1]) - pad))
    x1 = int(min(camera.width, np.ceil(hi[0]) + pad + 1))
    y1 = int(min(camera.height, np.ceil(hi[1]) + pad + 1))
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1 - x0, y1 - y0


def rasterise(meshes: Sequence[MeshInstance], camera: CameraSpec, light: LightSpec,
              znear: float = 0.05, zfar: float = 20.0) -> Tuple[np.ndarray, np.ndarray]:
    """Render meshes with a z-buffer.

    Only the image region the meshes project to is rasterised (the rest is
    empty); the software rasteriser's cost grows with the viewport.

    Args:
        meshes: posed meshes in the OpenCV camera frame (metres).
        camera: intrinsics and image size.
        light: key/fill/ambient lighting.

    Returns:
        ``(rgb, depth)``: ``uint8 HxWx3`` sRGB (RGB order, black where empty)
        and ``float32 HxW`` metric z depth (0 where empty).

    Raises:
        RenderError: the OpenGL backend is unavailable or failed.
    """
    rgb_full = np.zeros((camera.height, camera.width, 3), np.uint8)
    depth_full = np.zeros((camera.height, camera.width), np.float32)
    region = _mesh_region(meshes, camera)
    if region is None:
        return rgb_full, depth_full
    x0, y0, rw, rh = region
    pyrender = _pyrender()
    scene = pyrender.Scene(ambient_light=np.full(3, float(light.ambient)), bg_color=np.zeros(4))
    for inst in meshes:
        verts_gl = (inst.vertices @ _CV_TO_GL.T).astype(np.float32)
        normals = inst.normals if inst.normals is not None else _normals(inst.vertices, inst.triangles)
        normals_gl = (normals @ _CV_TO_GL.T).astype(np.float32)
        colour = np.concatenate([inst.albedo, np.ones((len(inst.albedo), 1), np.float32)], axis=1)
        groups = [(inst.triangles, inst.roughness)]
        if inst.glossy_triangles is not None and inst.glossy_triangles.any():
            groups = [(inst.triangles[~inst.glossy_triangles], inst.roughness),
                      (inst.triangles[inst.glossy_triangles], 0.25)]
        prims = []
        for tris, rough in groups:
            material = pyrender.MetallicRoughnessMaterial(
                baseColorFactor=np.ones(4, dtype=np.float32), metallicFactor=0.0, roughnessFactor=float(rough))
            prims.append(pyrender.Primitive(positions=verts_gl, normals=normals_gl, color_0=colour,
                                            indices=tris, material=material))
        scene.add(pyrender.Mesh(prims))
    # pyrender's projection puts pixel centres at +0.5 (OpenGL window
    # coordinates); shifting the principal point by half a pixel makes the
    # image follow the OpenCV convention u = fx X / Z + cx. The region's
    # origin moves the principal point as well.
    cam = pyrender.IntrinsicsCamera(camera.fx, camera.fy, camera.cx - x0 + 0.5, camera.cy - y0 + 0.5,
                                    znear=znear, zfar=zfar)
    scene.add(cam, pose=np.eye(4))
    colour_rgb = np.asarray(light.colour, dtype=np.float64)
    key_dir = _light_direction_gl(light.azimuth_deg, light.elevation_deg)
    scene.add(pyrender.DirectionalLight(color=colour_rgb, intensity=float(light.intensity)),
              pose=_look_rotation(key_dir))
    if light.fill > 0:
        fill_dir = _light_direction_gl(-0.8 * light.azimuth_deg - 20.0 * np.sign(light.azimuth_deg or 1.0), 5.0)
        scene.add(pyrender.DirectionalLight(color=colour_rgb, intensity=float(light.intensity * light.fill)),
                  pose=_look_rotation(fill_dir))
    offscreen = _offscreen(camera.width, camera.height)
    inner = offscreen._renderer
    try:
        # Draw into the lower-left rw x rh corner of the full-size context
        # and read back only that: OSMesa has no framebuffer objects in
        # pyrender, and a context per region size would recompile shaders.
        offscreen._platform.make_current()
        inner.viewport_width, inner.viewport_height = rw, rh
        inner.render(scene, pyrender.RenderFlags.NONE)
        depth = inner.read_depth_buf()
        rgb = inner.read_color_buf()
    except Exception as exc:
        raise RenderError(f"OpenGL rendering failed: {exc}") from exc
    finally:
        inner.viewport_width, inner.viewport_height = camera.width, camera.height
        offscreen._platform.make_uncurrent()
    rgb_full[y0:y0 + rh, x0:x0 + rw] = rgb[..., :3]
    depth_full[y0:y0 + rh, x0:x0 + rw] = depth
    return rgb_full, depth_full


def _normals(verts: np.ndarray, tris: np.ndarray) -> np.ndarray:
    from .appearance import vertex_normals
    return vertex_normals(verts, tris)


# ------------------------------------------------------------------ background

def _value_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1] (float32) by bicubic upsampling of a coarse random grid."""
    gh, gw = max(2, int(round(cells * h / max(h, w)))), max(2, int(round(cells * w / max(h, w))))
    grid = rng.random((gh + 1, gw + 1), dtype=np.float32)
    return np.clip(cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)


def _pixel_rays(camera: CameraSpec) -> Tuple[np.ndarray, np.ndarray]:
    u = (np.arange(camera.width, dtype=np.float32) - np.float32(camera.cx)) / np.float32(camera.fx)
    v = (np.arange(camera.height, dtype=np.float32) - np.float32(camera.cy)) / np.float32(camera.fy)
    return u[None, :], v[:, None]


def render_background(spec: BackgroundSpec, camera: CameraSpec) -> Tuple[np.ndarray, np.ndarray]:
    """Colour (``uint8 HxWx3`` sRGB, RGB order, before lighting) and z depth (metres) of the room.

    Results are cached for the last few specs (a bag reuses one room), so
    the arrays are read-only.

    Raises:
        RenderError: invalid spec values.
    """
    if not spec.wall_distance_m > 0.5:
        raise RenderError(f"wall_distance_m must be > 0.5, got {spec.wall_distance_m}")
    if spec.clutter < 0:
        raise RenderError(f"clutter must be >= 0, got {spec.clutter}")
    if spec.palette not in _PALETTES:
        raise RenderError(f"palette must be one of {sorted(_PALETTES)}, got {spec.palette!r}")
    return _background_cached(spec, camera)


@dataclass(frozen=True)
class _Palette:
    """Colour ranges of a room (uniform draws; see ``BackgroundSpec.palette``)."""

    wall_grey: Tuple[float, float]
    wall_tint: float
    floor_grey: Tuple[float, float]
    floor_tint: Tuple[float, float]
    clutter_chroma: Tuple[float, float]


_PALETTES: Dict[str, _Palette] = {
    "muted": _Palette(wall_grey=(0.35, 0.85), wall_tint=0.08, floor_grey=(0.2, 0.6), floor_tint=(0.8, 1.1),
                      clutter_chroma=(0.15, 0.6)),
    "wide": _Palette(wall_grey=(0.12, 0.95), wall_tint=0.2, floor_grey=(0.1, 0.8), floor_tint=(0.7, 1.2),
                     clutter_chroma=(0.15, 1.0)),
}


@functools.lru_cache(maxsize=8)
def _background_cached(spec: BackgroundSpec, camera: CameraSpec) -> Tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([0xB6, int(spec.seed)])
    h, w = camera.height, camera.width
    rx, ry = _pixel_rays(camera)
    # Wall plane n . X = d with its normal turned by wall_yaw about the vertical.
    yaw = np.radians(spec.wall_yaw_deg)
    denom = np.float32(np.sin(yaw)) * rx + np.float32(np.cos(yaw))
    z_wall = np.float32(spec.wall_distance_m * np.cos(yaw)) / np.maximum(denom, np.float32(0.05))
    depth = np.broadcast_to(np.minimum(z_wall, 50.0), (h, w)).astype(np.float32)
    # Colour is built at half resolution: the room is smooth and blurred by
    # the optics anyway, and this is most of the background's cost.
    hh, hw = (h + 1) // 2, (w + 1) // 2
    pal = _PALETTES[spec.palette]
    wall_rgb = (rng.uniform(*pal.wall_grey) + rng.uniform(-pal.wall_tint, pal.wall_tint, 3)).astype(np.float32)
    shade = 0.8 + 0.25 * _value_noise(rng, hh, hw, 6) + 0.08 * (_value_noise(rng, hh, hw, 60) - 0.5)
    colour = shade[..., None] * wall_rgb
    if spec.floor_height_m is not None:
        # Floor: the plane y = floor_height (camera frame, y down) for rays pointing down.
        z_floor = np.where(ry > 1e-3, np.float32(spec.floor_height_m) / np.maximum(ry, np.float32(1e-3)),
                           np.float32(np.inf))
        floor = z_floor < depth
        depth = np.where(floor, z_floor, depth)
        floor_rgb = (rng.uniform(*pal.floor_grey) * np.array([1.0, 0.85, 0.7])
                     * rng.uniform(*pal.floor_tint, 3)).astype(np.float32)
        zf = cv2.resize(np.minimum(np.broadcast_to(z_floor, (h, w)), 50.0).astype(np.float32), (hw, hh),
                        interpolation=cv2.INTER_NEAREST)
        xs = cv2.resize(np.broadcast_to(rx, (h, w)).astype(np.float32), (hw, hh), interpolation=cv2.INTER_NEAREST)
        planks = 0.85 + 0.15 * np.sin(xs * zf * np.float32(rng.uniform(8, 20))) ** 2
        fl = cv2.resize(floor.astype(np.uint8), (hw, hh), interpolation=cv2.INTER_NEAREST).astype(bool)
        colour[fl] = (planks[..., None] * floor_rgb)[fl]
    # Clutter: posters on the wall and boxes/furniture in front of it.
    for _ in range(int(spec.clutter)):
        cw, ch = rng.uniform(0.08, 0.35) * w, rng.uniform(0.08, 0.45) * h
        x0, y0 = rng.uniform(-0.1 * w, w - 0.3 * cw), rng.uniform(-0.1 * h, h - 0.3 * ch)
        kind = rng.random()
        # Muted colours: rooms are mostly greys, woods and faded prints.
        grey = rng.uniform(0.15, 0.85)
        base = (grey + rng.uniform(*pal.clutter_chroma) * (rng.uniform(0.05, 0.95, 3) - grey)).astype(np.float32)
        x1, y1, x2, y2 = int(max(0, x0)), int(max(0, y0)), int(min(w, x0 + cw)), int(min(h, y0 + ch))
        if x2 - x1 < 4 or y2 - y1 < 4:
            continue
        cx1, cy1, cx2, cy2 = x1 // 2, y1 // 2, max(x1 // 2 + 1, x2 // 2), max(y1 // 2 + 1, y2 // 2)
        ph, pw = cy2 - cy1, cx2 - cx1
        if kind < 0.45:      # poster: wall depth, printed texture, maybe stripes
            patt = _value_noise(rng, ph, pw, int(rng.integers(2, 8)))[..., None]
            tile = base * (0.6 + 0.6 * patt)
            if rng.random() < 0.5:
                period = rng.uniform(3, 15)
                stripes = (np.sin(np.arange(pw) / period * 2 * np.pi) > 0)[None, :, None]
                tile = np.where(stripes, tile * 0.6, tile)
            colour[cy1:cy2, cx1:cx2] = tile
        else:                # object in front of the wall, behind the faces
            far = float(np.min(depth[y1:y2, x1:x2])) - 0.05
            z_obj = rng.uniform(spec.min_object_depth_m, max(spec.min_object_depth_m + 0.1, far))
            tile = base * (0.75 + 0.25 * _value_noise(rng, ph, pw, 3)[..., None])
            tile[:, :2] *= 0.6      # a darker side edge, as box sides catch less light
            colour[cy1:cy2, cx1:cx2] = tile
            depth[y1:y2, x1:x2] = np.minimum(depth[y1:y2, x1:x2], np.float32(z_obj))
    colour = cv2.resize(np.clip(colour * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8), (w, h),
                        interpolation=cv2.INTER_LINEAR)
    colour.setflags(write=False)
    depth.setflags(write=False)
    return colour, depth


# ------------------------------------------------------------------ sensor model

def _shadow_holes(z: np.ndarray, fx: float, baseline: float, fg: np.ndarray) -> np.ndarray:
    """Pixels the IR projector cannot see because a nearer surface is in the way.

    The projector sits ``baseline`` beside the IR camera, on the image-left
    side here, so shadows fall on the far surface to the right of each
    foreground edge: pixel u with depth z is shadowed if some pixel u-k at
    nearer depth z' satisfies ``fx * b * (1/z' - 1/z) >= k``.
    """
    h, w = z.shape
    holes = np.zeros_like(fg)
    if not fg.any():
        return holes
    ys, xs = np.nonzero(fg)
    zmin = float(z[fg].min())
    zmax = float(z[z > 0].max())
    kmax = int(np.ceil(fx * baseline * (1.0 / zmin - 1.0 / zmax)))
    kmax = max(1, min(kmax, w // 4))
    y1, y2 = ys.min(), ys.max() + 1
    x1, x2 = xs.min(), min(w, xs.max() + 1 + kmax)
    sub = z[y1:y2, x1:x2].astype(np.float64)
    inv = np.where(sub > 0, 1.0 / np.maximum(sub, 1e-6), 0.0)
    out = np.zeros(sub.shape, dtype=bool)
    for k in range(1, kmax + 1):
        nearer = np.zeros_like(inv)
        nearer[:, k:] = inv[:, :-k]
        out |= (fx * baseline * (nearer - inv) >= k) & (sub > 0)
    holes[y1:y2, x1:x2] = out
    return holes


@functools.lru_cache(maxsize=1)
def _gauss_table() -> np.ndarray:
    """A fixed table of N(0, 1) float32 samples that frames slice at random offsets.

    Drawing ~1.2 M fresh normals per frame cost more than the rest of the
    sensor model; a random window into a 4 M table keeps the noise
    deterministic per seed and different between frames.
    """
    table = np.random.default_rng(0x6A055).standard_normal(1 << 22, dtype=np.float32)
    table.setflags(write=False)
    return table


def _gauss(rng: np.random.Generator, shape: Tuple[int, ...]) -> np.ndarray:
    n = int(np.prod(shape))
    table = _gauss_table()
    if n > len(table):
        return rng.standard_normal(shape, dtype=np.float32)
    start = int(rng.integers(0, len(table) - n + 1))
    return table[start:start + n].reshape(shape)


def _smooth_within_surfaces(z: np.ndarray, sigma_px: float) -> np.ndarray:
    """Blur depth laterally but not across discontinuities (Kinect's matching window).

    Where the blur moved a reading by more than 1.5 cm it mixed two
    surfaces (a silhouette); those pixels keep their own depth.
    """
    blurred = cv2.GaussianBlur(z, (0, 0), sigma_px)
    return np.where(np.abs(blurred - z) < np.float32(0.015), blurred, z)


def _axial_noise(rng: np.random.Generator, shape: Tuple[int, int], sensor: SensorSpec,
                 width_scale: float) -> np.ndarray:
    """Unit-variance depth noise, part of it spatially correlated if the sensor says so."""
    white = _gauss(rng, shape)
    a = float(sensor.correlated_noise)
    if a <= 0:
        return white
    sigma = max(0.5, sensor.correlation_px * width_scale)
    corr = cv2.GaussianBlur(_gauss(rng, shape), (0, 0), sigma)
    # A Gaussian of sigma s keeps 1 / (2 sqrt(pi) s) of white noise's std in 2-D.
    corr *= np.float32(2.0 * np.sqrt(np.pi) * sigma)
    return np.float32(np.sqrt(1.0 - a)) * white + np.float32(np.sqrt(a)) * corr


def _dropout_mask(rng: np.random.Generator, h: int, w: int, sensor: SensorSpec) -> np.ndarray:
    """Random dropout blobs (ellipses) plus isolated pixels, as a boolean mask."""
    mask = np.zeros((h, w), np.uint8)
    scale = float(sensor.blob_scale)
    mean_area = 25.0 * (w * h) / (640 * 480) * scale * scale
    for _ in range(int(rng.poisson(sensor.dropout_fraction * w * h / mean_area))):
        centre = (int(rng.integers(w)), int(rng.integers(h)))
        axes = (int(rng.integers(1, 6)), int(rng.integers(1, 4)))
        if scale != 1.0:
            axes = (max(1, int(round(axes[0] * scale))), max(1, int(round(axes[1] * scale))))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    n_salt = int(rng.poisson(0.25 * sensor.dropout_fraction * w * h))
    mask[rng.integers(0, h, n_salt), rng.integers(0, w, n_salt)] = 1
    return mask.astype(bool)


def _degrade_depth(z: np.ndarray, fg: np.ndarray, camera: CameraSpec, sensor: SensorSpec,
                   rng: np.random.Generator) -> np.ndarray:
    """Kinect-like noise, quantisation and holes; returns uint16 millimetres."""
    valid = z > 0
    if sensor.ideal:
        return np.where(valid, np.round(z * 1000.0), 0).astype(np.uint16)
    h, w = z.shape
    width_scale = w / 640.0
    holes = _shadow_holes(z, camera.fx, sensor.baseline_m, fg)
    # Flying pixels at depth discontinuities: random holes along edges.
    kernel = np.ones((3, 3), np.uint8)
    spread = cv2.dilate(z, kernel) - cv2.erode(np.where(valid, z, np.float32(1e3)), kernel)
    edge = valid & (spread > 0.04 * np.maximum(z, 0.1))
    band = edge
    if sensor.edge_band_px > 0:
        size = 2 * int(sensor.edge_band_px) + 1
        band = valid & cv2.dilate(edge.astype(np.uint8), np.ones((size, size), np.uint8)).astype(bool)
    ey, ex = np.nonzero(band)
    drop = rng.random(len(ey)) < sensor.edge_hole_prob
    holes[ey[drop], ex[drop]] = True
    # Grazing surfaces return too little of the projected pattern.
    gx = cv2.Sobel(z, cv2.CV_32F, 1, 0, ksize=1) * np.float32(0.5 * camera.fx)
    gy = cv2.Sobel(z, cv2.CV_32F, 0, 1, ksize=1) * np.float32(0.5 * camera.fy)
    zc = np.maximum(z, np.float32(1e-3))
    cos2 = np.float32(sensor.grazing_cos ** 2)
    holes |= valid & ~edge & ((gx * gx + gy * gy) * cos2 > (1.0 - cos2) * zc * zc)
    if sensor.dropout_fraction > 0:
        holes |= _dropout_mask(rng, h, w, sensor)
    if sensor.smooth_px > 0:
        z = _smooth_within_surfaces(z, sensor.smooth_px * width_scale)
    # Axial noise (sigma ~ z^2) then disparity quantisation.
    zn = z + _axial_noise(rng, (h, w), sensor, width_scale) * (np.float32(sensor.noise_mm_at_1m * 1e-3) * z * z)
    if sensor.quant_mm_at_1m > 0:
        c = np.float32(1.0 / (sensor.quant_mm_at_1m * 1e-3))    # disparity steps per (1/m)
        zn = c / np.maximum(np.round(c / np.maximum(zn, np.float32(1e-3))), np.float32(1.0))
    keep = valid & ~holes & (zn >= sensor.min_range_m) & (zn <= sensor.max_range_m)
    return np.where(keep, np.round(zn * np.float32(1000.0)), 0).astype(np.uint16)


def _highlight_gain(img: np.ndarray, percentile: float) -> float:
    """The largest gain that keeps ``percentile`` % of the grey image below 250."""
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    cum = np.cumsum(np.bincount(grey.ravel(), minlength=256))
    level = int(np.searchsorted(cum, percentile / 100.0 * grey.size))
    return 250.0 / max(level, 1)


def _degrade_colour(rgb: np.ndarray, sensor: SensorSpec, rng: np.random.Generator) -> np.ndarray:
    if sensor.ideal:
        return rgb
    img = rgb
    if sensor.auto_exposure:
        target = rng.uniform(*sensor.auto_exposure)
        mean = float(np.mean(cv2.mean(img)[:3]))
        gain = target / max(mean, 1.0)
        if sensor.highlight_percentile > 0:
            gain = min(gain, _highlight_gain(img, sensor.highlight_percentile))
        gain = float(np.clip(gain, 0.6, 2.0))
        img = cv2.multiply(img, (gain, gain, gain, 0.0))
    if sensor.colour_blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), sensor.colour_blur)
    if sensor.colour_noise > 0:
        noisy = cv2.scaleAdd(_gauss(rng, img.shape), float(sensor.colour_noise), img.astype(np.float32))
        img = np.clip(noisy + np.float32(0.5), 0, 255).astype(np.uint8)
    return img


def composite(face_rgb: np.ndarray, face_depth: np.ndarray, background_rgb: np.ndarray,
              background_depth: np.ndarray, light: LightSpec) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Put rendered meshes in front of the room; returns ``(rgb uint8, z metres, mesh mask)``."""
    fg = (face_depth > 0) & (face_depth < background_depth)
    # The room sees the same light colour and a brightness from key+ambient.
    gain = np.asarray(light.colour, dtype=np.float64) * float(
        np.clip(0.35 + 0.5 * light.ambient + 0.12 * light.intensity, 0.4, 1.3))
    rgb = cv2.multiply(background_rgb, tuple(float(g) for g in gain) + (0.0,))
    rgb[fg] = face_rgb[fg]
    z = np.where(fg, face_depth, background_depth).astype(np.float32)
    return rgb, z, fg


def sensor_pair(rgb: np.ndarray, z: np.ndarray, fg: np.ndarray, camera: CameraSpec, sensor: SensorSpec,
                rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Ideal RGB + z (metres) -> (BGR uint8, depth uint16 mm) as a Kinect would deliver."""
    colour = _degrade_colour(rgb, sensor, rng)
    depth_mm = _degrade_depth(z, fg, camera, sensor, rng)
    return np.ascontiguousarray(colour[..., ::-1]), depth_mm
