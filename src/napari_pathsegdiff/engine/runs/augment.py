"""H&E-aware augmentations of image batches, reproducible from a ``torch.Generator``.

Images are float tensors ``(B, 3, H, W)`` in [0, 1]. Every random choice is drawn from the
generator passed in, so a training step that seeds its generator from (seed, stage, step)
sees exactly the same augmented batch when it is run again after a resume.

The stain jitter follows Tellez et al. (2018): the optical density is split into haematoxylin,
eosin and DAB components with the Ruifrok–Johnston matrix (the one of
``skimage.color.rgb2hed``), each component is scaled and shifted a little, and the result is
turned back into RGB.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# skimage.color.rgb_from_hed (rows: H, E, DAB stain vectors in optical density)
_RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float32
)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)
_LOG_EPS = 1e-6


def _uniform(gen: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def flip_rot90(x: torch.Tensor, gen: torch.Generator, *, tokens: torch.Tensor | None = None):
    """Random dihedral transform (flips and 90° rotations) of each image of a batch.

    Parameters
    ----------
    x : Tensor (B, C, H, W)
        Square images or latents.
    gen : torch.Generator
    tokens : Tensor (B, 1 + g*g, D), optional
        Guide context whose tokens after the first form a ``g × g`` grid over the image:
        the grid is transformed like the image.

    Returns
    -------
    Tensor, or (Tensor, Tensor) when ``tokens`` is given.
    """
    codes = torch.randint(0, 8, (x.shape[0],), generator=gen)
    out = torch.stack([_dihedral(img, int(c)) for img, c in zip(x, codes)])
    if tokens is None:
        return out
    n_grid = tokens.shape[1] - 1
    g = int(round(n_grid**0.5))
    if n_grid == 0:
        return out, tokens
    grids = tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], g, g)
    grids = torch.stack([_dihedral(grid, int(c)) for grid, c in zip(grids, codes)])
    return out, torch.cat([tokens[:, :1], grids.flatten(2).transpose(1, 2)], dim=1)


def _dihedral(img: torch.Tensor, code: int) -> torch.Tensor:
    if code >= 4:
        img = img.flip(-1)
    return torch.rot90(img, code % 4, dims=(-2, -1))


def random_crop(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """An independent random ``size × size`` crop of each image."""
    b, _, h, w = x.shape
    if size > h or size > w:
        raise ValueError(f"crop of {size} px is larger than the images ({h}×{w}).")
    ys = torch.randint(0, h - size + 1, (b,), generator=gen)
    xs = torch.randint(0, w - size + 1, (b,), generator=gen)
    return torch.stack([img[:, y : y + size, x0 : x0 + size] for img, y, x0 in zip(x, ys, xs)])


def hed_jitter(x: torch.Tensor, gen: torch.Generator, *, scale: float = 0.05, shift: float = 0.05):
    """Stain jitter: each of the H, E, D components times ``1 ± scale`` plus ``± shift``."""
    b = x.shape[0]
    m_in = _HED_FROM_RGB.to(x.device, x.dtype)
    m_out = _RGB_FROM_HED.to(x.device, x.dtype)
    od = -torch.log(x.clamp_min(_LOG_EPS)).permute(0, 2, 3, 1)  # B H W 3
    hed = od @ m_in
    alpha = _uniform(gen, b * 3, 1 - scale, 1 + scale).view(b, 1, 1, 3).to(x)
    beta = _uniform(gen, b * 3, -shift, shift).view(b, 1, 1, 3).to(x)
    od2 = (hed * alpha + beta) @ m_out
    return torch.exp(-od2).clamp(0, 1).permute(0, 3, 1, 2)


def color_jitter(
    x: torch.Tensor,
    gen: torch.Generator,
    *,
    brightness: float = 0.15,
    contrast: float = 0.15,
    saturation: float = 0.15,
) -> torch.Tensor:
    """Brightness, contrast and saturation factors drawn in ``1 ± value`` per image."""
    b = x.shape[0]
    f_b = _uniform(gen, b, 1 - brightness, 1 + brightness).view(b, 1, 1, 1).to(x)
    f_c = _uniform(gen, b, 1 - contrast, 1 + contrast).view(b, 1, 1, 1).to(x)
    f_s = _uniform(gen, b, 1 - saturation, 1 + saturation).view(b, 1, 1, 1).to(x)
    x = x * f_b
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * f_c + mean
    grey = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - grey) * f_s + grey
    return x.clamp(0, 1)


def gaussian_blur(
    x: torch.Tensor, gen: torch.Generator, *, p: float = 0.3, sigma: tuple[float, float] = (0.1, 1.5)
) -> torch.Tensor:
    """Blur each image with probability ``p`` by a Gaussian of a random sigma (pixels)."""
    b, c, _, _ = x.shape
    apply = torch.rand(b, generator=gen) < p
    sigmas = _uniform(gen, b, *sigma)
    out = x.clone()
    radius = int(2 * sigma[1] + 0.5)
    grid = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    for i in torch.nonzero(apply).flatten().tolist():
        k = torch.exp(-(grid**2) / (2 * float(sigmas[i]) ** 2))
        k = k / k.sum()
        img = F.pad(x[i : i + 1], (radius,) * 4, mode="reflect")
        img = F.conv2d(img, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        out[i : i + 1] = F.conv2d(img, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return out


def ssl_view(x: torch.Tensor, gen: torch.Generator, *, crop: int) -> torch.Tensor:
    """One strongly augmented view for self-supervised learning: crop, dihedral, stain,
    colour and blur."""
    v = random_crop(x, crop, gen)
    v = flip_rot90(v, gen)
    v = hed_jitter(v, gen)
    v = color_jitter(v, gen)
    return gaussian_blur(v, gen)
