"""Building blocks of the MaskDiT: embeddings, attention, AdaLN-Zero blocks, the final layer.

Layout follows DiT (Peebles & Xie 2023, `models.py`): small modules, AdaLN-Zero modulation driven by a
conditioning vector c, and gates / output projections initialised to zero so every block starts as identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C) tokens in row-major patch order, channels last within a patch."""
    return rearrange(x, "b c (h p) (w q) -> b (h w) (p q c)", p=patch_size, q=patch_size)


def unpatchify(tokens: torch.Tensor, patch_size: int, channels: int, height: int) -> torch.Tensor:
    """(B, N, p*p*C) -> (B, C, H, W); inverse of `patchify` for an image `height` pixels tall."""
    rows = height // patch_size
    return rearrange(tokens, "b (h w) (p q c) -> b c (h p) (w q)", h=rows, p=patch_size, q=patch_size, c=channels)


def sincos_position_embedding(width: int, grid_size: int) -> torch.Tensor:
    """Fixed 2D sine-cosine position embedding (MAE/DiT), (grid_size**2, width), row-major grid."""
    if width % 4 != 0:
        raise ValueError(f"position embedding width must be divisible by 4, got {width}")
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    freqs = 1.0 / 10000 ** (torch.arange(width // 4, dtype=torch.float64) / (width // 4))

    def embed(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * freqs  # (N, width/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (N, width/2)

    return torch.cat([embed(rows), embed(cols)], dim=1).float()  # (N, width)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN modulation; x (B, L, D), shift/scale (B, 1, D)."""
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of the time condition t in [-1, 1] followed by an MLP (DiT).

    The condition is signed (negative = flow branch, DESIGN §3), and sin/cos features of a signed input stay
    smooth, which the forward-mode JVP through t needs. time_scale multiplies t before the features: DiT's
    1000 makes dG/dt so large that the consistency residual saturates its clip and training diverged in our
    one-batch overfit; sCM (Lu & Song 2024) likewise found small time scales stable. 10 trains stably.
    """

    def __init__(self, width: int, frequency_dim: int = 256, time_scale: float = 10.0):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.time_scale = time_scale
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t (B,) -> (B, width)."""
        half = self.frequency_dim // 2
        dtype = torch.promote_types(t.dtype, torch.float32)  # float32 at least, float64 when asked
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=dtype) / half)
        angles = (t.to(dtype) * self.time_scale)[:, None] * freqs[None]  # (B, half)
        features = torch.cat([angles.cos(), angles.sin()], dim=-1)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


# On CPU an explicit softmax(QK^T)V beats the fused SDPA kernel for short sequences: forward + backward of the
# tiny preset (64 tokens, batch 64, bf16) took 850 ms against 1,214 ms on our 2-core machine.
CPU_MATH_ATTENTION_MAX_KEYS = 256


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None, backend: str = "auto"
) -> torch.Tensor:
    """Multi-head attention on (B, H, L, Dh) tensors; key_mask (B, Lk) is True for keys to attend to.

    backend "math" is an explicit softmax(QK^T)V, which supports forward-mode AD (torch.func.jvp); the fused
    SDPA kernels ("sdpa") do not (DESIGN §3). "auto" is SDPA, except math for short sequences on CPU.
    """
    if backend == "auto":
        short_on_cpu = q.device.type == "cpu" and k.shape[-2] <= CPU_MATH_ATTENTION_MAX_KEYS
        backend = "math" if short_on_cpu else "sdpa"
    bias = None
    if key_mask is not None:
        bias = key_mask[:, None, None, :]  # (B, 1, 1, Lk), broadcast over heads and queries
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, Lq, Lk)
    if bias is not None:
        scores = scores.masked_fill(~bias, float("-inf"))
    return scores.softmax(dim=-1) @ v


class Attention(nn.Module):
    """Self-attention, or cross-attention to a context of the same width when `cross=True`."""

    def __init__(self, width: int, heads: int, cross: bool = False):
        super().__init__()
        if width % heads != 0:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.cross = cross
        if cross:
            self.to_q = nn.Linear(width, width)
            self.to_kv = nn.Linear(width, 2 * width)
        else:
            self.to_qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        math_attention: bool = False,
    ) -> torch.Tensor:
        """x (B, L, D), context (B, Lc, D) for cross-attention, context_mask (B, Lc) -> (B, L, D)."""
        if self.cross:
            q = self.to_q(x)
            k, v = self.to_kv(context).chunk(2, dim=-1)
        else:
            q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        q, k, v = (rearrange(t, "b l (h d) -> b h l d", h=self.heads) for t in (q, k, v))
        out = attend(q, k, v, context_mask if self.cross else None, "math" if math_attention else "auto")
        return self.proj(rearrange(out, "b h l d -> b l (h d)"))


class Mlp(nn.Sequential):
    def __init__(self, width: int, mlp_ratio: float):
        hidden = int(width * mlp_ratio)
        super().__init__(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))


class TransformerBlock(nn.Module):
    """DiT block with AdaLN-Zero (shift, scale, gate for attention and MLP) and optional text cross-attention.

    The cross-attention has no gate; its output projection starts at zero instead (PixArt-alpha), so the block
    is still an identity at initialisation.
    """

    def __init__(self, width: int, heads: int, cond_dim: int, mlp_ratio: float, cross_attention: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(width, mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * width))
        self.cross_attn = Attention(width, heads, cross=True) if cross_attention else None
        self.norm_cross = nn.LayerNorm(width, eps=1e-6) if cross_attention else None

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        math_attention: bool = False,
    ) -> torch.Tensor:
        """x (B, L, D), c (B, cond_dim), context (B, Lc, D) -> (B, L, D)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c)[:, None].chunk(6, dim=-1)
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1), math_attention=math_attention)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.norm_cross(x), context, context_mask, math_attention=math_attention)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """AdaLN (shift, scale) then a linear map to p*p*C values per token."""

    def __init__(self, width: int, cond_dim: int, out_features: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * width))
        self.linear = nn.Linear(width, out_features)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x (B, N, D), c (B, cond_dim) -> (B, N, out_features)."""
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))
