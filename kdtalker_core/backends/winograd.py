"""Winograd F(2x2, 3x3) convolutions for bf16 on the CPU, in plain PyTorch ops.

A 3x3 convolution (stride 1, zero padding 1) over 2x2 output tiles becomes 16 independent
matrix products (one per point of the 4x4 transformed tile): (tiles, Cin) @ (Cin, Cout), i.e.
16 multiplies per 4 outputs instead of 36, at the price of a cheap input and output transform.
oneDNN's bf16 direct convolution is slower than this on AVX512-BF16 CPUs without AMX for
convolutions with many output channels (see :func:`preferred`); for float32 it loses (oneDNN's
float32 GEMMs are slow on the CPU it was tuned on, and NNPACK is faster), and on CUDA cuDNN is
left alone.

Transforms (the standard F(2,3) matrices; weights transformed once, in float32, then cast):
    U = G g G^T     G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    V = B^T d B     B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    Y = A^T M A     A^T = [[1, 1, 1, 0], [0, 1, -1, -1]],   M = V (.) U summed over Cin

The bias is added at transform point (1,1), the only one that A^T . A spreads evenly to all
four outputs of a tile. Error (bf16): about 3.5x the relative error of the direct bf16
convolution (the transformed input and weights are rounded to bf16): 5.7e-3 vs 1.7e-3 relative
on unit-variance data, full-size 512->512 at 64x64.
``KDTALKER_BF16_WINOGRAD=0|1`` turns it off / on whatever the shape rule says.
"""

from __future__ import annotations

import os

import torch

_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
_AT = ((1.0, 1.0, 1.0, 0.0), (0.0, 1.0, -1.0, -1.0))

#: The dtypes this path runs in (float32 would lose against oneDNN / NNPACK here).
DTYPES = (torch.bfloat16,)


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """weight (Cout,Cin,3,3) -> U (16,Cin,Cout) contiguous in weight's dtype (transformed in float32).

    U[4a+b] = (G g G^T)[a,b] as a (Cin,Cout) matrix.
    """
    g = torch.tensor(_G, dtype=torch.float32, device=weight.device)
    u = torch.einsum("ai,kcij,bj->abck", g, weight.float(), g)  # (4,4,Cin,Cout)
    return u.reshape(16, weight.shape[1], weight.shape[0]).to(weight.dtype).contiguous()


def _input_transform(xp: torch.Tensor, tile_rows: int) -> torch.Tensor:
    """Zero-padded rows xp (B, 2*tile_rows+2, W+2, C), W even -> V (16, B*tile_rows*(W/2), C) in xp's dtype."""
    b, _, wp, c = xp.shape
    w = wp - 2
    th, tw = tile_rows, w // 2
    rows = [xp[:, i:i + 2 * th:2] for i in range(4)]  # (B, th, W+2, C): row i of every tile
    v = torch.empty(4, 4, b, th, tw, c, dtype=xp.dtype, device=xp.device)
    tmp = torch.empty(b, th, wp, c, dtype=xp.dtype, device=xp.device)
    for a in range(4):
        if a == 0:
            torch.sub(rows[0], rows[2], out=tmp)
        elif a == 1:
            torch.add(rows[1], rows[2], out=tmp)
        elif a == 2:
            torch.sub(rows[2], rows[1], out=tmp)
        else:
            torch.sub(rows[1], rows[3], out=tmp)
        cols = [tmp[:, :, j:j + w:2] for j in range(4)]  # (B, th, tw, C)
        torch.sub(cols[0], cols[2], out=v[a, 0])
        torch.add(cols[1], cols[2], out=v[a, 1])
        torch.sub(cols[2], cols[1], out=v[a, 2])
        torch.sub(cols[1], cols[3], out=v[a, 3])
    return v.view(16, b * th * tw, c)


def _output_matrix(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(4,16): row 2i+j holds A^T[i,a] * A^T[j,b] at column 4a+b (entries 0, +-1: exact in any dtype)."""
    at = torch.tensor(_AT, dtype=torch.float32)
    return torch.einsum("ia,jb->ijab", at, at).reshape(4, 16).to(dtype=dtype, device=device)


#: Bytes of transformed tiles per band (V or M); bands keep them cache-resident.
BAND_BYTES = 8 << 20


def conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None, band_bytes: int = BAND_BYTES) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` by Winograd F(2x2,3x3); ``u = transform_weight(weight)``.

    x (B,Cin,H,W) with H, W even, any memory format; u (16,Cin,Cout) and bias (Cout,) in x's
    dtype -> (B,Cout,H,W) channels-last in x's dtype. The output transform is one matrix product
    (its sums accumulate in float32 inside the GEMM, so only its result is rounded). The map is
    processed in bands of tile rows so that the transformed tiles (about ``band_bytes`` per band)
    stay in cache: 8 MiB measured up to 1.9x faster than one band on 128x128 maps.
    """
    b, c, h, w = x.shape
    cout = u.shape[2]
    th, tw = h // 2, w // 2
    xp = x.new_empty(b, h + 2, w + 2, c)  # zero padding 1, channels innermost
    xp[:, 1:h + 1, 1:w + 1].copy_(x.permute(0, 2, 3, 1))
    for border in (xp[:, 0], xp[:, h + 1], xp[:, :, 0], xp[:, :, w + 1]):
        border.zero_()
    a = _output_matrix(x.dtype, x.device)
    out = torch.empty(b, cout, h, w, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    tiles = out.permute(0, 2, 3, 1).view(b, th, 2, tw, 2, cout)
    band = max(1, min(th, band_bytes // (16 * b * tw * max(c, cout) * x.element_size())))
    for t0 in range(0, th, band):
        n = min(band, th - t0)
        m = torch.bmm(_input_transform(xp[:, 2 * t0: 2 * (t0 + n) + 2], n), u)  # (16, B*n*tw, Cout)
        if bias is not None:
            m[5].add_(bias)  # transform point (1,1)
        y = torch.mm(a, m.view(16, -1)).view(2, 2, b, n, tw, cout)
        tiles[:, t0:t0 + n].copy_(y.permute(2, 3, 0, 4, 1, 5))
    return out


def preferred(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``conv3x3`` should replace oneDNN for this bf16 CPU convolution.

    Shape rule from single-thread measurements on a Zen 5 CPU (AVX512-BF16, no AMX) over the
    decoder's shapes (direct ms -> Winograd ms): it wins with at least 128 input and 256 output
    channels (512->512 at 64x64: 36.5 -> 23.2; 512->256 at 128x128: 75 -> 51; 256->256 at 64x64:
    9.0 -> 6.4; 128->1024 at 64x64: 19.1 -> 15.0; 128->512 at 256x256: 175 -> 149) and loses with
    few output channels (256->64, 128->128, 64->64 at 256x256: 1.6x slower). Only CPU tensors of
    :data:`DTYPES`, 3x3 kernels, even H and W. ``KDTALKER_BF16_WINOGRAD`` = ``0`` / ``1``
    overrides the rule (``1`` keeps the dtype / device / size requirements).
    """
    if (x.device.type != "cpu" or x.dtype not in DTYPES or weight.dtype != x.dtype or x.dim() != 4
            or tuple(weight.shape[2:]) != (3, 3) or x.shape[2] % 2 or x.shape[3] % 2):
        return False
    forced = os.environ.get("KDTALKER_BF16_WINOGRAD", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return x.shape[1] >= 128 and weight.shape[0] >= 256
