"""Shared transformer building blocks for the ``lensblur_models`` families.

Every model in :mod:`lensblur_models` that works on image tokens is assembled from these parts:

* :class:`PatchEmbed` / :func:`unpatchify` — ``(B, C, H, W)`` images <-> ``(B, N, dim)`` tokens,
  ``N = (H / patch) * (W / patch)`` in row-major patch order.
* :func:`sincos_pos_embed_2d` — fixed 2-D sine/cosine position embedding.
* :func:`fourier_features`, :class:`ScalarEmbedder`, :class:`TimestepEmbedder` — embed
  continuous conditions (focus point, bokeh level, diffusion time) into a ``(B, dim)`` vector.
* :class:`TransformerBlock` / :class:`TokenTransformer` — pre-norm attention + MLP blocks whose
  LayerNorms are modulated by the condition vector with *adaLN-zero* (DiT): the modulation is
  initialised to zero, so every block starts as the identity map.

Persistence is the ``diffusers`` one: the networks subclass
:class:`~lensblur_models.common.LensBlurModel` (``save_pretrained`` / ``from_pretrained``).

Example:
    >>> import torch
    >>> embed = PatchEmbed(in_ch=3, dim=32, patch=4)
    >>> tokens, (gh, gw) = embed(torch.zeros(2, 3, 8, 12))
    >>> tokens.shape, (gh, gw)
    (torch.Size([2, 6, 32]), (2, 3))
    >>> net = TokenTransformer(dim=32, depth=2, heads=4)
    >>> net(tokens, torch.zeros(2, 32)).shape
    torch.Size([2, 6, 32])
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from lensblur import LensBlurError

__all__ = [
    "PatchEmbed",
    "unpatchify",
    "patchify",
    "sincos_pos_embed_2d",
    "fourier_features",
    "ScalarEmbedder",
    "TimestepEmbedder",
    "TransformerBlock",
    "TokenTransformer",

]


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}")
    if value <= 0:
        raise LensBlurError(f"`{name}` must be a positive int, got {value}")
    return value


# ------------------------------------------------------------------------------- patches


class PatchEmbed(nn.Module):
    """Split an image into non-overlapping ``patch x patch`` patches and project each to ``dim``.

    Args:
        in_ch: input channels ``C``.
        dim: token width.
        patch: patch side in pixels; ``H`` and ``W`` must be multiples of it.

    Shapes:
        ``x`` ``(B, C, H, W)`` -> ``tokens`` ``(B, N, dim)`` with ``N = gh * gw``,
        ``gh = H // patch``, ``gw = W // patch`` (row-major order), and ``(gh, gw)``.

    Example:
        >>> import torch
        >>> tokens, grid = PatchEmbed(1, 8, 2)(torch.zeros(1, 1, 4, 6))
        >>> tokens.shape, grid
        (torch.Size([1, 6, 8]), (2, 3))
    """

    def __init__(self, in_ch: int, dim: int, patch: int):
        super().__init__()
        self.in_ch = _check_positive_int(in_ch, "in_ch")
        self.dim = _check_positive_int(dim, "dim")
        self.patch = _check_positive_int(patch, "patch")
        self.proj = nn.Conv2d(in_ch, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"`x` must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.in_ch:
            raise LensBlurError(
                f"`x` must have shape (B, {self.in_ch}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.patch or w % self.patch:
            raise LensBlurError(
                f"`x` spatial size {h}x{w} must be a multiple of patch={self.patch}")
        y = self.proj(x)  # (B, dim, gh, gw)
        gh, gw = y.shape[-2:]
        return y.flatten(2).transpose(1, 2), (int(gh), int(gw))


def unpatchify(tokens: torch.Tensor, patch: int, out_ch: int, gh: int, gw: int) -> torch.Tensor:
    """Inverse of patchification: ``(B, N, patch*patch*out_ch)`` tokens -> image.

    Each token holds one patch laid out as ``(patch, patch, out_ch)`` (row, column, channel),
    tokens in row-major patch order, ``N == gh * gw``.

    Returns:
        ``(B, out_ch, gh * patch, gw * patch)``.

    Example:
        >>> import torch
        >>> unpatchify(torch.zeros(2, 6, 4 * 3), patch=2, out_ch=3, gh=2, gw=3).shape
        torch.Size([2, 3, 4, 6])
    """
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"`tokens` must be a torch.Tensor, got {type(tokens).__name__}")
    for v, n in ((patch, "patch"), (out_ch, "out_ch"), (gh, "gh"), (gw, "gw")):
        _check_positive_int(v, n)
    if tokens.dim() != 3 or tokens.shape[1] != gh * gw or tokens.shape[2] != patch * patch * out_ch:
        raise LensBlurError(
            f"`tokens` must have shape (B, {gh * gw}, {patch * patch * out_ch}) for gh={gh}, "
            f"gw={gw}, patch={patch}, out_ch={out_ch}; got {tuple(tokens.shape)}")
    b = tokens.shape[0]
    x = tokens.reshape(b, gh, gw, patch, patch, out_ch)
    x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, gh, p, gw, p)
    return x.reshape(b, out_ch, gh * patch, gw * patch)


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Exact inverse of :func:`unpatchify` (no projection): ``(B, C, H, W)`` -> ``(B, N, p*p*C)``.

    Example:
        >>> import torch
        >>> x = torch.randn(1, 3, 4, 6)
        >>> torch.equal(unpatchify(patchify(x, 2), 2, 3, 2, 3), x)
        True
    """
    _check_positive_int(patch, "patch")
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise LensBlurError(f"`x` must be a (B, C, H, W) tensor, got {getattr(x, 'shape', x)!r}")
    b, c, h, w = x.shape
    if h % patch or w % patch:
        raise LensBlurError(f"`x` spatial size {h}x{w} must be a multiple of patch={patch}")
    gh, gw = h // patch, w // patch
    x = x.reshape(b, c, gh, patch, gw, patch).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, gh * gw, patch * patch * c)



# ------------------------------------------------------------------------------- embeddings


def _sincos_1d(pos: torch.Tensor, dim: int) -> torch.Tensor:
    omega = torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0)
    omega = 1.0 / 10000 ** omega
    out = pos.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_pos_embed_2d(gh: int, gw: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """Fixed 2-D sine/cosine position embedding (MAE / DiT convention).

    The first ``dim/2`` channels encode the row index, the last ``dim/2`` the column index, each
    as ``[sin(pos * w_k), cos(pos * w_k)]`` with ``w_k = 10000^(-2k/(dim/2))``.

    Args:
        gh, gw: token grid; dim: width, a multiple of 4.

    Returns:
        ``(gh * gw, dim)`` in row-major order (matches :class:`PatchEmbed`).

    Example:
        >>> sincos_pos_embed_2d(2, 3, 8).shape
        torch.Size([6, 8])
    """
    for v, n in ((gh, "gh"), (gw, "gw"), (dim, "dim")):
        _check_positive_int(v, n)
    if dim % 4:
        raise LensBlurError(f"`dim` must be a multiple of 4, got {dim}")
    rows = torch.arange(gh, device=device).repeat_interleave(gw)
    cols = torch.arange(gw, device=device).repeat(gh)
    emb = torch.cat([_sincos_1d(rows, dim // 2), _sincos_1d(cols, dim // 2)], dim=1)
    return emb.to(dtype=dtype or torch.get_default_dtype())


def fourier_features(x: torch.Tensor, num_freqs: int, max_freq: float = 64.0) -> torch.Tensor:
    """Random-free Fourier features of continuous scalars.

    For every scalar ``x_j`` and frequency ``f_i`` (``num_freqs`` values spaced geometrically from
    1 to ``max_freq``) the output holds ``sin(pi * f_i * x_j)`` and ``cos(pi * f_i * x_j)``; scalars
    in ``[-1, 1]`` use the full band.

    Args:
        x: ``(..., k)`` tensor.
        num_freqs: number of frequencies; ``max_freq``: the highest one (>= 1).

    Returns:
        ``(..., k * 2 * num_freqs)`` laid out per scalar as ``[sin(f_1..f_n), cos(f_1..f_n)]``.

    Example:
        >>> import torch
        >>> fourier_features(torch.zeros(4, 3), num_freqs=5).shape
        torch.Size([4, 30])
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`x` must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"`x` must be a floating point tensor, got {x.dtype}")
    if x.dim() < 1:
        raise LensBlurError("`x` must have at least one dimension (..., k)")
    _check_positive_int(num_freqs, "num_freqs")
    if not max_freq >= 1.0:
        raise LensBlurError(f"`max_freq` must be >= 1, got {max_freq}")
    if num_freqs == 1:
        freqs = torch.ones(1, device=x.device, dtype=x.dtype)
    else:
        freqs = torch.logspace(0.0, math.log10(max_freq), num_freqs, device=x.device, dtype=x.dtype)
    arg = math.pi * x[..., None] * freqs  # (..., k, F)
    out = torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)  # (..., k, 2F)
    return out.flatten(-2)


class ScalarEmbedder(nn.Module):
    """Embed ``k`` continuous scalars (e.g. focus ``x, y`` and bokeh level) into one vector.

    ``MLP([x, fourier_features(x)])``: the raw values keep the embedding monotone-friendly, the
    Fourier features give it resolution.

    Shapes: ``x`` ``(B, k)`` -> ``(B, dim)``.

    Example:
        >>> import torch
        >>> ScalarEmbedder(3, 16)(torch.rand(2, 3)).shape
        torch.Size([2, 16])
    """

    def __init__(self, num_scalars: int, dim: int, num_freqs: int = 8, max_freq: float = 64.0):
        super().__init__()
        self.num_scalars = _check_positive_int(num_scalars, "num_scalars")
        self.num_freqs = _check_positive_int(num_freqs, "num_freqs")
        self.max_freq = float(max_freq)
        in_dim = num_scalars * (1 + 2 * num_freqs)
        self.mlp = nn.Sequential(nn.Linear(in_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"`x` must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.num_scalars:
            raise LensBlurError(
                f"`x` must have shape (B, {self.num_scalars}), got {tuple(x.shape)}")
        dtype = self.mlp[0].weight.dtype
        x = x.to(dtype)
        feats = torch.cat([x, fourier_features(x, self.num_freqs, self.max_freq)], dim=-1)
        return self.mlp(feats)


class TimestepEmbedder(nn.Module):
    """Embed a diffusion / flow time ``t`` (any float scale, typically ``[0, 1]``) into ``dim``.

    Sinusoidal embedding of ``1000 * t`` (256 channels, periods up to 10000) followed by an MLP,
    as in DiT.

    Shapes: ``t`` ``(B,)`` -> ``(B, dim)``.

    Example:
        >>> import torch
        >>> TimestepEmbedder(16)(torch.tensor([0.0, 0.5])).shape
        torch.Size([2, 16])
    """

    def __init__(self, dim: int, freq_dim: int = 256, scale: float = 1000.0):
        super().__init__()
        _check_positive_int(dim, "dim")
        self.freq_dim = _check_positive_int(freq_dim, "freq_dim")
        if self.freq_dim % 2:
            raise LensBlurError(f"`freq_dim` must be even, got {freq_dim}")
        self.scale = float(scale)
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"`t` must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 1:
            raise LensBlurError(f"`t` must have shape (B,), got {tuple(t.shape)}")
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device,
                                                              dtype=torch.float32) / half)
        arg = (t.float() * self.scale)[:, None] * freqs[None]
        emb = torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


# ------------------------------------------------------------------------------- transformer


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class TransformerBlock(nn.Module):
    """Pre-norm multi-head self-attention + MLP block with adaLN-zero conditioning.

    ``cond`` ``(B, dim)`` is mapped (SiLU, Linear) to six vectors: shift/scale/gate for the
    attention branch and for the MLP branch::

        x = x + gate_a * Attn(LN(x) * (1 + scale_a) + shift_a)
        x = x + gate_m * MLP(LN(x) * (1 + scale_m) + shift_m)

    The modulation Linear is zero-initialised, so a fresh block is the identity.

    Shapes: ``x`` ``(B, N, dim)``, ``cond`` ``(B, dim)`` -> ``(B, N, dim)``.

    Example:
        >>> import torch
        >>> blk = TransformerBlock(16, heads=2)
        >>> x = torch.randn(1, 5, 16)
        >>> torch.equal(blk(x, torch.randn(1, 16)), x)  # adaLN-zero: identity at init
        True
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        _check_positive_int(dim, "dim")
        _check_positive_int(heads, "heads")
        if dim % heads:
            raise LensBlurError(f"`dim` ({dim}) must be divisible by `heads` ({heads})")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = max(1, int(round(dim * mlp_ratio)))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, d))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        sa, ca, ga, sm, cm, gm = self.ada(cond).chunk(6, dim=-1)
        x = x + ga[:, None, :] * self.attention(_modulate(self.norm1(x), sa, ca))
        x = x + gm[:, None, :] * self.mlp(_modulate(self.norm2(x), sm, cm))
        return x


class TokenTransformer(nn.Module):
    """A stack of :class:`TransformerBlock` followed by an adaLN-modulated final LayerNorm.

    Args:
        dim: token width; depth: number of blocks; heads: attention heads (divide ``dim``);
        mlp_ratio: MLP hidden width / ``dim``.

    Shapes: ``tokens`` ``(B, N, dim)``, ``cond`` ``(B, dim)`` -> ``(B, N, dim)`` (normalised and
    modulated; put a Linear head on top).

    Gradient checkpointing: with ``gradient_checkpointing = True`` (set by
    ``ModelMixin.enable_gradient_checkpointing`` of the model holding it) every block is
    recomputed in the backward pass instead of keeping its activations.

    Example:
        >>> import torch
        >>> TokenTransformer(16, depth=2, heads=2)(torch.randn(3, 7, 16), torch.randn(3, 16)).shape
        torch.Size([3, 7, 16])
    """

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        _check_positive_int(depth, "depth")
        self.dim = dim
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)
        self.gradient_checkpointing = False

    def _run_block(self, blk: TransformerBlock, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            func = getattr(self, "_gradient_checkpointing_func", None)
            if func is None:
                return torch.utils.checkpoint.checkpoint(blk, x, cond, use_reentrant=False)
            return func(blk, x, cond)
        return blk(x, cond)

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor) or not isinstance(cond, torch.Tensor):
            raise TypeError("`tokens` and `cond` must be torch.Tensors")
        if tokens.dim() != 3 or tokens.shape[-1] != self.dim:
            raise LensBlurError(
                f"`tokens` must have shape (B, N, {self.dim}), got {tuple(tokens.shape)}")
        if cond.shape != (tokens.shape[0], self.dim):
            raise LensBlurError(
                f"`cond` must have shape ({tokens.shape[0]}, {self.dim}), got {tuple(cond.shape)}")
        x = tokens
        for blk in self.blocks:
            x = self._run_block(blk, x, cond)
        shift, scale = self.ada(cond).chunk(2, dim=-1)
        return _modulate(self.norm(x), shift, scale)
