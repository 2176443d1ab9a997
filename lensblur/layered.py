r"""Occlusion-aware layered depth-of-field rendering.

:func:`render_layered` turns an all-in-focus image and its **signed** circle of confusion
(diameter in pixels, negative = nearer than the focus plane) into a depth-of-field image in which

* a sharp, in-focus object keeps sharp edges over a blurred background (no background colour
  bleeds into it, and there is no dark or bright halo around it), and
* a blurred near object spreads semi-transparently over whatever lies behind it, including the
  background that it hid in the input (the *partial-occlusion* fill).

Notation: ``s(p)`` is the signed coc of pixel ``p``, ``I`` the linear image.

1. **Layer centres.**  The centres :math:`m_0 < \dots < m_{K-1}` (nearest first) are points of
   a fixed grid, uniform in the warped coordinate :math:`u(s) = \operatorname{sign}(s)\log(1 +
   |s|/3)` with step 0.3 and one point at 0 (the focus plane): neighbouring layers differ by
   about 1 px of blur near focus and by ~35 % of the blur far from it, so that within a layer
   the blur varies little.  Only the grid points that bracket the batch's coc range are used
   (``K`` adapts to the range; the step grows when more than :data:`MAX_LAYERS` would be
   needed), or ``num_layers`` points uniform in ``u`` over the range.  Because the grid is fixed,
   the centres do not move when the coc moves a little.
2. **Soft assignment.**  Pixel ``p`` belongs to layer ``k`` with the piecewise-linear *tent*
   weight :math:`w_k(s)` (1 at :math:`m_k`, 0 at the neighbouring centres).  The weights sum to
   one, are continuous in ``s`` and have a non-zero derivative, so the render is differentiable
   w.r.t. depth and every lens parameter (no hard bins).  A surface whose coc lies between two
   centres is shared by the two neighbouring layers.
3. **Layer content and coc field.**  Layer ``k`` holds its own pixels as premultiplied colour
   :math:`w_k I` with coverage :math:`w_k`.  Its coc field keeps each own pixel's coc and gives
   every other pixel the coc of the nearest own pixels (a push-pull extension
   :math:`\bar c_k`): :math:`c_k = w_k |s| + (1 - w_k) \bar c_k`.  The field is therefore smooth
   around the content, so the scatter operator's normalisation neither dilutes nor inflates the
   layer's coverage.
4. **Partial-occlusion fill.**  Where content *more than one layer nearer*
   (:math:`H_{k-2} = \sum_{j \le k-2} w_j`) hid layer ``k`` in the input, the layer is
   extended behind the occluder with what plausibly lies there, and never with light that is
   not in the scene:

   * *Where*: a push-pull pyramid (pull: 2x2 sums rescaled to coverage <= 1; push: bilinear
     upsampling fills what a level misses) whose coverage is the **visibility**
     :math:`V_k = 1 - H_{k-2}` (the pixels no occluder hides) and whose contents are the
     layer's premultiplied colour :math:`w_k I` and coverage :math:`w_k`.  The fill's coverage
     is therefore the layer's **density among the visible pixels around the hole** (a layer
     that covers 10 % of its visible neighbourhood covers 10 % of the hole; the rest goes to the
     layers behind), not a presence that saturates at 1 as soon as a single pixel of the layer
     is near.  It reaches as far as the larger of the largest blur radius in front (what a
     blurred occluder reveals) and the layer's own blur radius (how far its own blur gathers
     from behind the occluder); fractional depths blend two pyramids, so the fill varies
     continuously.
   * *How bright*: no brighter, channel by channel, than :data:`FILL_CAP` times a **robust
     local level**, a geometric mean over :math:`2^4` px blocks (a small light holds a small
     share of a block's log-radiance): the layer's own level where the layer is a surface
     there (its surface, the layer and its two neighbours, covers at least half of the visible
     pixels; nothing below an eighth), shrunk towards the level of all visible pixels where it
     is only a few pixels (a small light), and towards the level of the whole neighbourhood
     where almost nothing is visible.  Push-pull continues the texture next to the hole, which
     for a light touching an occluder means copying the light behind it; the cap stops that.

   The fill never takes the occluder's colour.  (Shares of the *same* surface in the
   neighbouring layer are not treated as occluders: they add up instead, see 6.)
5. **Blur.**  Colour and coverage of each layer are blurred together by
   :func:`lensblur.defocus` with ``method="scatter"`` (each source pixel spreads its own bokeh,
   so highlights, squeeze and cat's-eye follow the source's coc and position) on any backend.
   The compiled backends get several layers stacked in one call.
6. **Ordered compositing.**  Front to back, each layer takes what the nearer ones left, but no
   more than its own blurred coverage :math:`A_k` (with :math:`P_k` its blurred premultiplied
   colour, :math:`\mathrm{cov}_{-1} = 0`)::

       r_k   = min(1, (1 - cov_{k-1}) / A_k)         # relative opacity of layer k
       out  += r_k P_k
       cov_k = cov_{k-1} + r_k A_k

   and the result is divided by the final coverage (1 almost everywhere).  The two shares of one
   surface split between neighbouring layers *add up* (the rear share is opaque relative to what
   the front share left), so nothing behind shows through a surface; a layer's colour is always
   its own blurred colour over its own blurred coverage (no dark halo next to a sharp object);
   and an in-focus object has coverage exactly 1 on its pixels, so nothing behind reaches them.

Cost: per non-empty layer an ``O(B C H W)`` pyramid or two and one blur of ``C + 1`` channels;
memory ``O(B C H W)`` per layer.  An all-in-focus input (``s = 0`` everywhere) is a single layer
blurred by 0 px and is returned unchanged.  See ``docs/layered.rst`` for pictures and the
reasoning behind each choice.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from .apertures import Aperture
from .defocus import defocus, resolve_backend

__all__ = ["render_layered", "layer_centres", "tent_weights", "push_pull", "MAX_LAYERS"]

#: Upper bound on the number of layers chosen automatically.
MAX_LAYERS = 24
#: Scale ``c_0`` (pixels) of the warp ``u(s) = sign(s) log(1 + |s| / c_0)``.
_WARP_C0 = 3.0
#: Layer spacing in warped units: ~1 px near focus, ~35 % of the coc far from it.
_WARP_STEP = 0.3


def _warp(s: float) -> float:
    return math.copysign(math.log1p(abs(s) / _WARP_C0), s)


def _unwarp(u: float) -> float:
    return math.copysign(_WARP_C0 * math.expm1(abs(u)), u)


def layer_centres(s_min: float, s_max: float, num_layers: Optional[int] = None) -> List[float]:
    """Layer centres (signed coc, pixels, ascending = nearest first) covering ``[s_min, s_max]``.

    By default the centres are the points of a fixed grid, uniform in
    ``u(s) = sign(s) log(1 + |s|/3)`` with step 0.3 (one of them at 0, the focus plane), that
    bracket the range; the step is multiplied by an integer when more than :data:`MAX_LAYERS`
    would be needed.  Being a fixed grid, the centres do not move when the extreme coc values
    move a little, so finite differences agree with the analytic gradient.  With
    ``num_layers`` the centres are ``num_layers`` points uniform in ``u`` from ``s_min`` to
    ``s_max``.

    Example:
        >>> layer_centres(0.0, 0.0)
        [0.0]
        >>> c = layer_centres(-10.0, 30.0)
        >>> len(c), c[0] <= -10.0, c[-1] >= 30.0
        (14, True, True)
    """
    u0, u1 = _warp(s_min), _warp(s_max)
    if num_layers is not None:
        if num_layers == 1 or s_max - s_min <= 1e-12:
            return [0.5 * (s_min + s_max)]
        return [_unwarp(u0 + (u1 - u0) * i / (num_layers - 1)) for i in range(num_layers)]
    step = _WARP_STEP
    while True:
        i0, i1 = math.floor(u0 / step), math.ceil(u1 / step)
        if i1 - i0 + 1 <= MAX_LAYERS:
            break
        step += _WARP_STEP
    return [_unwarp(i * step) for i in range(i0, i1 + 1)]


def tent_weights(s: torch.Tensor, centres: List[float], k: int) -> torch.Tensor:
    """Piecewise-linear weight of layer ``k``: 1 at ``centres[k]``, 0 at its neighbours.

    The weights of all layers sum to one for ``s`` inside ``[centres[0], centres[-1]]`` (the
    first and last layers extend flat beyond their centres).  At a centre the derivative is
    taken as 0, the mean of the two one-sided slopes of a symmetric tent, so a pixel exactly in
    focus gets no spurious one-sided gradient.
    """
    d = s - centres[k]
    lo = centres[k] - centres[k - 1] if k > 0 else math.inf
    hi = centres[k + 1] - centres[k] if k < len(centres) - 1 else math.inf
    t = 1.0 - d.abs() / torch.where(d < 0, torch.full_like(s, lo), torch.full_like(s, hi))
    return torch.where(t > 0, t, torch.zeros_like(t))


def push_pull(premult: torch.Tensor, alpha: torch.Tensor, levels
              ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Push-pull fill: what the coarser pyramid levels say about each pixel.

    Pull: each level sums 2x2 blocks of premultiplied colour and coverage and rescales them so
    that the coverage is at most 1 (``P' = sum P / max(1, sum A)``, ``A' = min(1, sum A)``).
    Push: from the coarsest level down, a level's missing coverage is filled by the bilinear
    upsampling of the level below it (``P += (1 - A) up(P')``).  Returns the premultiplied
    colour and coverage that the coarser levels supply at full resolution (the level-0 pixels
    themselves are not included): ``fill_alpha`` is 1 within about ``2**levels`` pixels of the
    content and falls to 0 beyond, ``fill / fill_alpha`` is the extrapolated colour.

    Args:
        premult: ``(B, C, H, W)`` premultiplied colour.
        alpha: ``(B, 1, H, W)`` coverage in [0, 1].
        levels: number of coarser levels (>= 1), an int or a ``(B,)`` integer tensor (per sample).

    Returns:
        ``(fill, fill_alpha)`` of shapes ``(B, C, H, W)`` and ``(B, 1, H, W)``.

    Example:
        >>> a = torch.zeros(1, 1, 8, 8); a[..., :, :4] = 1.0
        >>> fill, fa = push_pull(a * 0.5, a, 2)
        >>> round(float(fill[0, 0, 4, 4] / fa[0, 0, 4, 4]), 6)
        0.5
    """
    levels_t = torch.as_tensor(levels, device=premult.device).reshape(-1)
    up = _push(_pull(torch.cat([premult, alpha], 1), int(levels_t.max())), levels_t)
    return up[:, :-1], up[:, -1:]


def _pull(x: torch.Tensor, levels: int) -> List[torch.Tensor]:
    """Pull pyramid of ``x`` (premultiplied channels, coverage last), ``levels`` levels above it."""
    pyramid = [x]
    for _ in range(levels):
        h, w = x.shape[-2:]
        if h == 1 and w == 1:
            break
        x = F.pad(x, (0, w % 2, 0, h % 2))
        x = x[..., 0::2, 0::2] + x[..., 1::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 1::2]
        x = x / x[:, -1:].clamp_min(1.0)
        pyramid.append(x)
    return pyramid


def _push(pyramid: List[torch.Tensor], levels: torch.Tensor) -> torch.Tensor:
    """Push a pull pyramid down to level 0 from level ``levels`` (``(B,)``, per sample); returns
    what the coarser levels supply at level 0 (premultiplied channels, coverage last)."""
    top = min(len(pyramid) - 1, int(levels.max()))
    up = None
    for level in range(top, 0, -1):
        cur = pyramid[level]
        if up is not None:
            cur = cur + (1.0 - cur[:, -1:]) * up
        if levels.numel() > 1 and bool((levels < level).any()):
            cur = cur * (levels >= level).to(cur.dtype).view(-1, 1, 1, 1)
        h, w = pyramid[level - 1].shape[-2:]
        up = F.interpolate(cur, size=(h + h % 2, w + w % 2), mode="bilinear",
                           align_corners=False)[..., :h, :w]
    if up is None:
        up = torch.zeros_like(pyramid[0])
    return up


def _hole_fill(pyramid: List[torch.Tensor], reach_px: torch.Tensor, max_levels: int) -> torch.Tensor:
    """Push-pull fill of a layer reaching ``reach_px`` pixels (``(B,)``), continuous in the reach.

    ``pyramid`` is a pull pyramid whose last channel is the coverage that the pull normalises by
    (the layer's *visibility*, see :func:`render_layered`).  The push depth
    ``l = log2(reach + 2) + 1`` is fractional: the fills of the two nearest integer depths are
    blended, so the fill (and the render) changes continuously when the blur in front of the
    layer changes.  The presence ``min(1, 2 A_fill)`` is full up to about half the pyramid's
    reach and falls to zero beyond it; every channel is scaled with it.
    """
    depth = (torch.log2(reach_px + 2.0) + 1.0).clamp(1.0, float(max_levels))
    lo = depth.detach().floor()
    frac = (depth - lo).view(-1, 1, 1, 1)
    lo = lo.long()
    fill = _push(pyramid, lo)
    if bool((frac > 0).any()):
        fill = fill + frac * (_push(pyramid, (lo + 1).clamp_max(max_levels)) - fill)
    return fill * (2.0 / (2.0 * fill[:, -1:]).clamp_min(1.0))


def _robust_level(sums: torch.Tensor, level: int) -> torch.Tensor:
    """Local means of ``sums`` (``(B, n, H, W)`` weighted values, the weight last) over blocks of
    ``2**level`` pixels, each block trusted in proportion to its weight (fully from a quarter of
    the block on) and completed from the coarser blocks, upsampled bilinearly to full size.

    Plain block sums, not the pull pyramid's rescaled ones: a block in which a single pixel
    is visible says little, so one small light cannot set the level of a whole block.  Returns
    the means (``(B, n - 1, H, W)``, per unit weight)."""
    H, W = sums.shape[-2:]
    levels = [sums]
    while levels[-1].shape[-1] > 1 or levels[-1].shape[-2] > 1:
        x = levels[-1]
        h, w = x.shape[-2:]
        x = F.pad(x, (0, w % 2, 0, h % 2))
        levels.append(x[..., 0::2, 0::2] + x[..., 1::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 1::2])
    level = max(0, min(level, len(levels) - 1))
    top = levels[-1]
    cur = top[:, :-1] / top[:, -1:].clamp_min(1e-6)
    for lv in range(len(levels) - 2, level - 1, -1):
        h, w = levels[lv].shape[-2:]
        up = F.interpolate(cur, size=(h + h % 2, w + w % 2), mode="bilinear",
                           align_corners=False)[..., :h, :w]
        weight = levels[lv][:, -1:]
        trust = (weight * (4.0 / 4 ** lv)).clamp(max=1.0)
        cur = up + trust * (levels[lv][:, :-1] / weight.clamp_min(1e-6) - up)
    f = 2 ** level
    if f > 1:
        cur = F.interpolate(cur, size=(cur.shape[-2] * f, cur.shape[-1] * f), mode="bilinear",
                            align_corners=False)
    return cur[..., :H, :W]


#: The fill never makes a hidden pixel brighter (per channel) than ``FILL_CAP`` times the
#: layer's robust local level (see :func:`render_layered`, step 4).
FILL_CAP = 1.25
#: Pyramid level of that robust level: a geometric mean over ``2**ROBUST_LEVEL`` pixels, where
#: a small light holds a small share of the pixels.
ROBUST_LEVEL = 4


#: Most images (layers x batch) blurred in one stacked :func:`~lensblur.defocus` call.
LAYERS_PER_CALL = 8


def _layers_per_call(backend: str, device: torch.device, batch: int = 1) -> int:
    """Layers per :func:`~lensblur.defocus` call: 1 for the PyTorch reference, else up to
    :data:`LAYERS_PER_CALL` images (layers x batch) per call."""
    if resolve_backend(backend, device) == "torch":
        return 1
    return max(1, LAYERS_PER_CALL // batch)


def _blur_group(group, aperture: Aperture, method: str, backend: str) -> List[torch.Tensor]:
    """Blur each ``(content, coc)`` pair of ``group`` with :func:`lensblur.defocus`, stacked
    along the batch dimension into one call when there are several."""
    if len(group) == 1:
        return [defocus(group[0][0], group[0][1], aperture, method=method, backend=backend)]
    B = group[0][0].shape[0]
    x = torch.cat([g[0] for g in group], 0)
    c = torch.cat([g[1] for g in group], 0)
    return list(defocus(x, c, aperture, method=method, backend=backend).split(B, 0))


def render_layered(image: torch.Tensor, signed_coc: torch.Tensor, aperture: Optional[Aperture] = None,
                   *, backend: str = "auto", num_layers: Optional[int] = None,
                   method: str = "scatter") -> torch.Tensor:
    r"""Occlusion-aware depth of field from linear radiance and a signed coc map.

    See the module docstring for the algorithm.  Inputs are trusted: :func:`lensblur.render`
    validates them and computes ``signed_coc`` from the lens (this function is also usable
    directly with any signed coc, e.g. :func:`lensblur.disparity_coc` with a sign).

    Args:
        image: ``(B, C, H, W)`` linear radiance (fp32/fp64; fp16/bf16 are computed in fp32).
        signed_coc: ``(B, 1, H, W)`` coc **diameter** in pixels, negative in front of the focus
            plane, positive behind it.
        aperture: bokeh shape (``None`` = disk).
        backend: kernel backend of :func:`lensblur.defocus`.
        num_layers: number of depth layers (``None``: adapts to the coc range, at most
            :data:`MAX_LAYERS`).
        method: blur operator used per layer, ``"scatter"`` (default) or ``"gather"``.

    Returns:
        ``(B, C, H, W)`` in ``image``'s dtype; differentiable w.r.t. ``image`` and ``signed_coc``.

    Example:
        >>> img = torch.rand(1, 3, 16, 16)
        >>> s = torch.zeros(1, 1, 16, 16); s[..., 8:, :] = 6.0   # lower half behind focus
        >>> out = render_layered(img, s, backend="torch")
        >>> torch.allclose(out[..., :4, :], img[..., :4, :])    # far from the edge: sharp
        True
    """
    if aperture is None:
        aperture = Aperture.disk()
    out_dtype = image.dtype
    work = torch.float64 if image.dtype == torch.float64 else torch.float32
    img = image.to(work)
    s = signed_coc.to(work)
    B, C, H, W = img.shape
    sd = s.detach()
    exact = (sd == 0) if s.requires_grad else None
    if exact is not None and bool(exact.any()) and float(sd.abs().max()) > 0:
        # Pixels exactly in focus sit on kinks of the render as a function of their coc (the
        # tents of the layers in front and behind start there, |s| and the compositing clamp
        # bend there).  Their gradient must be the symmetric one, what a central difference
        # sees, not whichever one-sided slope autograd happens to pick: render them a hair
        # (FOCUS_EPS_PX) in front of and behind the focus plane and average.  The forward
        # changes by O(FOCUS_EPS_PX / layer spacing) only; without gradients it is exact.
        eps = torch.where(exact, torch.full_like(s, FOCUS_EPS_PX), torch.zeros_like(s))
        lo, hi = s - eps, s + eps
        centres = layer_centres(float(lo.detach().min()), float(hi.detach().max()), num_layers)
        out = 0.5 * (_render(img, lo, centres, aperture, backend, method)
                     + _render(img, hi, centres, aperture, backend, method))
        return out.to(out_dtype)
    centres = layer_centres(float(sd.min()), float(sd.max()), num_layers)
    if len(centres) == 1:
        coc = s.abs()
        if float(coc.detach().max()) == 0.0:
            # all in focus: unchanged (a new tensor).  The render stays in the graph with its
            # true derivative, 0: a hair off focus either way every pixel is blurred by far less
            # than a pixel (and |s| has a symmetric derivative of 0 at 0)
            return (img + 0.0 * s).to(out_dtype, copy=True)
        return defocus(img, coc, aperture, method=method, backend=backend).to(out_dtype)
    return _render(img, s, centres, aperture, backend, method).to(out_dtype)


#: Offset (pixels of coc) at which pixels exactly in focus are rendered on either side of the
#: focus plane when gradients are needed (see :func:`render_layered`).
FOCUS_EPS_PX = 1e-6


def _render(img: torch.Tensor, s: torch.Tensor, centres: List[float], aperture: Aperture,
            backend: str, method: str) -> torch.Tensor:
    """The layered render of :func:`render_layered` with the given layer centres (``K >= 1``)."""
    B, C, H, W = img.shape
    sd = s.detach()
    K = len(centres)
    max_levels = max(1, int(math.floor(math.log2(max(min(H, W), 2)))))
    top_level = max(1, int(math.ceil(math.log2(max(H, W, 2)))))     # down to 1 x 1
    abs_s = s.abs()
    full_depth = torch.tensor([top_level])
    # per-sample, per-channel floor of the log colour: 1e-3 of the mean positive radiance
    log_eps = img.clamp_min(0.0).mean((2, 3), keepdim=True) * 1e-3 + 1e-12

    # Layers are built nearest first, blurred in groups (the compiled backends bound their
    # offset loops per tile by the tile's own largest coc, so several layers are stacked along
    # the batch into one call; the PyTorch reference sizes one window by the largest coc, so it
    # gets one call per layer) and composited as soon as they are blurred, which bounds the
    # memory to one group of layers.
    per_call = _layers_per_call(backend, img.device, B)
    out = torch.zeros_like(img)
    cov = torch.zeros_like(s)

    def composite(group):
        nonlocal out, cov
        for layer in _blur_group(group, aperture, method, backend):
            p_k, a_k = layer[:, :C], layer[:, C:]
            # front to back: take what the nearer layers left, at most this layer's coverage
            r = ((1.0 - cov) / a_k.clamp_min(1e-12)).clamp(0.0, 1.0)
            out = out + r * p_k
            cov = cov + r * a_k

    pending = []                      # (premultiplied colour + coverage, coc field)
    h_km1 = torch.zeros_like(s)       # H_{k-1} = sum_{j <= k-1} w_j: at least one layer nearer
    h_km2 = torch.zeros_like(s)       # H_{k-2}: more than one layer nearer (occluders)
    for k in range(K):
        w = tent_weights(s, centres, k)
        hidden = h_km2
        h_km2, h_km1 = h_km1, h_km1 + w
        # a layer matters if a pixel lies in its closed support: also a pixel exactly at a
        # neighbouring centre (w = 0 there, but moving it moves weight into this layer)
        lo_c = centres[k - 1] if k > 0 else -math.inf
        hi_c = centres[k + 1] if k + 1 < K else math.inf
        if not bool(((sd >= lo_c) & (sd <= hi_c)).any()):
            continue
        # the layer's coc field: its own pixels keep their coc, the others take the coc of the
        # nearest own pixels (a push-pull extension), so the field is smooth around the content
        own = w * img
        ext = _push(_pull(torch.cat([w * abs_s, w], 1), top_level), full_depth)
        ext = (ext[:, :1] + 1e-6 * abs(centres[k])) / (ext[:, 1:] + 1e-6)
        coc = w * abs_s + (1.0 - w) * ext
        content, alpha = own, w
        # partial-occlusion fill, reaching as far as the largest blur radius in front (what a
        # blurred occluder reveals) and as far as this layer's own blur gathers behind it
        # (H_{k-2} > 0 where s < centres[k-1], and it moves with s where s = centres[k-1])
        if k >= 2 and bool((sd <= centres[k - 1]).any()):
            reach = ((hidden * abs_s).reshape(B, -1).amax(1) / 2).clamp_min(abs(centres[k]) / 2)
            # densities over the pixels that no occluder hides (visible = 1 - H_{k-2})
            visible = 1.0 - hidden
            pyramid = _pull(torch.cat([own, w, visible], 1), top_level)
            fill = _hole_fill(pyramid, reach, max_levels)
            # the robust level of what lies behind the occluder (step 4 of the module docstring)
            log_img = torch.log(img.clamp_min(0.0) + log_eps)
            surface = w + tent_weights(s, centres, k - 1) if k > 0 else w
            if k + 1 < K:
                surface = surface + tent_weights(s, centres, k + 1)
            # means over the visible pixels (w > 0 only where visible), and over all pixels
            rv = _robust_level(torch.cat([w * log_img, visible * log_img, w, visible * surface,
                                          visible], 1), ROBUST_LEVEL)
            ones = torch.ones_like(w)
            all_log = _robust_level(torch.cat([log_img, ones], 1), ROBUST_LEVEL)
            seen = (4.0 * _robust_level(torch.cat([visible, ones], 1), ROBUST_LEVEL + 2)).clamp(0.0, 1.0)
            own_log = rv[:, :C] / rv[:, 2 * C:2 * C + 1].clamp_min(1e-6)
            vis_log = rv[:, C:2 * C]
            trust = ((rv[:, 2 * C + 1:] - 0.125) / 0.375).clamp(0.0, 1.0)
            vis_log = vis_log + trust * (own_log - vis_log)
            level = torch.exp(all_log + seen * (vis_log - all_log))
            fill_alpha = fill[:, C:C + 1]
            fill_colour = torch.minimum(fill[:, :C], FILL_CAP * level * fill_alpha)
            content = content + hidden * fill_colour
            alpha = alpha + hidden * fill_alpha
        pending.append((torch.cat([content, alpha], 1), coc))
        if len(pending) == per_call:
            composite(pending)
            pending = []
    if pending:
        composite(pending)
    return out / cov.clamp_min(1e-6)
