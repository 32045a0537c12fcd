"""The classic multiscale filter bank in torch: scikit-image's features, several times faster.

:func:`filter_bank` computes exactly what :func:`skimage.feature.multiscale_basic_features`
computes on an RGB image with ``channel_axis=-1`` (scikit-image 0.26), channels first, for a
batch of tiles at once:

- scales ``sigma_min * 2 ** linspace(0, log2(sigma_max / sigma_min), num_sigma)``;
- **intensity**: the Gaussian-smoothed image (:func:`scipy.ndimage.gaussian_filter`, mode
  ``'nearest'``, kernel radius ``int(4 * sigma + 0.5)``);
- **edges**: the Sobel gradient magnitude of the smoothed image (:func:`skimage.filters.sobel`,
  mode ``'reflect'``), ``sqrt((gy**2 + gx**2) / 2)``;
- **texture**: the two eigenvalues, largest first, of the Hessian built from
  :func:`numpy.gradient` applied twice to the smoothed image (central differences inside,
  one-sided at the border);
- channel order: for each RGB channel, for each scale, the filters above in that order.

The Gaussian is separable and applied along each axis as matrix products with a small banded
Toeplitz block (the axis is cut into blocks of at least :data:`BLOCK` outputs, each read with
the kernel's reach on both sides), which CPU BLAS runs far faster than ``conv2d`` with a
single-channel ``1 x k`` kernel. The borders match SciPy exactly: mode ``'nearest'`` is
torch's ``'replicate'`` padding, and for the 3-tap Sobel SciPy's ``'reflect'``
(``d c b a | a b c d``) also repeats the edge pixel, so it is ``'replicate'`` too (torch's
``'reflect'`` is SciPy's ``'mirror'``, ``d c b | a b c d``, and is not used).

Precision: scikit-image computes in float32 (SciPy sums each Gaussian in float64, then
rounds). Here each plane is smoothed minus its mean (derivatives ignore the offset, intensity
adds it back), which keeps float32 sums small; kernels longer than
:data:`LONGEST_FLOAT32_KERNEL` taps are summed in float64. On H&E tiles the result is within
5e-7 of scikit-image's (6e-4 of a channel's standard deviation at most), about as far as
scikit-image's own float32 rounding is from the exact values.

Every scale is computed at full resolution. Computing the large scales on a downsampled image
and upsampling was measured (``scripts/bench_filter_bank.py --coarse``) and is not used: at
half resolution, sigma 16 saves a quarter of the time but moves the Hessian eigenvalues by
up to 3 % of their standard deviation (see BENCHMARKS.md, "Filter bank in torch").
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: Smallest output block of the banded Gaussian matrix products (pixels along one axis).
BLOCK = 64
#: Gaussian kernel radius in units of sigma, as scikit-image's (and SciPy's) default.
TRUNCATE = 4.0
#: Longer Gaussian kernels are summed in float64 (as SciPy sums every kernel): float32 sums
#: of more taps err by up to 2e-3 of the standard deviation of the second derivatives they
#: feed, which shrink with the scale (sigma 16 on H&E, BENCHMARKS.md "Filter bank in torch").
LONGEST_FLOAT32_KERNEL = 65


def filter_sigmas(sigma_min: float, sigma_max: float, num_sigma: int) -> np.ndarray:
    """The Gaussian scales of the filter bank, spaced geometrically as scikit-image spaces them.

    Examples
    --------
    >>> filter_sigmas(1.0, 16.0, 5).tolist()
    [1.0, 2.0, 4.0, 8.0, 16.0]
    """
    return np.logspace(np.log2(sigma_min), np.log2(sigma_max), num=num_sigma, base=2, endpoint=True)


def filters_per_sigma(*, intensity: bool, edges: bool, texture: bool) -> int:
    """Channels per RGB channel and scale: 1 for intensity, 1 for edges, 2 for texture."""
    return int(intensity) + int(edges) + 2 * int(texture)


def filter_bank(
    image: torch.Tensor | np.ndarray,
    *,
    sigma_min: float = 1.0,
    sigma_max: float = 16.0,
    num_sigma: int = 5,
    intensity: bool = True,
    edges: bool = True,
    texture: bool = True,
) -> torch.Tensor | np.ndarray:
    """Multiscale intensity, edge and texture features of a batch of tiles, channels first.

    Parameters
    ----------
    image : torch.Tensor or ndarray, shape (B, C, H, W)
        Floating-point tiles (RGB in [0, 1] for the classic features; any ``C`` works).
    sigma_min, sigma_max : float
        Smallest and largest Gaussian scale in pixels, ``0 < sigma_min <= sigma_max``.
    num_sigma : int
        Number of scales, spaced geometrically (at least 1).
    intensity, edges, texture : bool
        Which filters to compute; at least one must be on.

    Returns
    -------
    torch.Tensor or ndarray, shape (B, C * num_sigma * per_sigma, H, W)
        The same kind of array as ``image`` (a tensor stays on its device), float64 for a
        float64 input and float32 otherwise; ``per_sigma`` is
        :func:`filters_per_sigma`. Channel ``(c * num_sigma + s) * per_sigma + f`` is filter
        ``f`` at scale ``s`` of input channel ``c``, as in
        ``np.moveaxis(multiscale_basic_features(img, channel_axis=-1, ...), -1, 0)``.

    Raises
    ------
    ValueError
        For an image that is not a 4-D floating-point batch, texture on tiles narrower than
        2 pixels, or bad settings; the message names the value.

    Examples
    --------
    >>> x = torch.rand(2, 3, 40, 50)
    >>> filter_bank(x, sigma_min=1, sigma_max=4, num_sigma=3).shape
    torch.Size([2, 36, 40, 50])
    >>> filter_bank(x.numpy(), num_sigma=1, sigma_max=1, texture=False).shape
    (2, 6, 40, 50)
    """
    check_settings(sigma_min, sigma_max, num_sigma, intensity, edges, texture)
    was_numpy = isinstance(image, np.ndarray)
    x = check_image(image, texture=texture)
    b, c, h, w = x.shape
    per_sigma = filters_per_sigma(intensity=intensity, edges=edges, texture=texture)
    sigmas = filter_sigmas(sigma_min, sigma_max, num_sigma)
    out = x.new_empty((b, c, len(sigmas), per_sigma, h, w))
    with torch.no_grad():
        # Centred planes keep float32 rounding small in the sums of the smoothing and in the
        # differences of the derivatives (these ignore the offset); intensity adds it back.
        offset = x.mean(dim=(-2, -1), keepdim=True)
        planes = (x - offset).reshape(b * c, h, w)
        for s, sigma in enumerate(sigmas):
            smoothed = gaussian(planes, float(sigma)).reshape(b, c, h, w)
            f = 0
            if intensity:
                torch.add(smoothed, offset, out=out[:, :, s, f])
                f += 1
            if edges:
                out[:, :, s, f] = sobel_magnitude(smoothed)
                f += 1
            if texture:
                out[:, :, s, f], out[:, :, s, f + 1] = hessian_eigenvalues(smoothed)
    out = out.reshape(b, c * len(sigmas) * per_sigma, h, w)
    return out.cpu().numpy() if was_numpy else out


def check_settings(
    sigma_min: float, sigma_max: float, num_sigma: int, intensity: bool, edges: bool, texture: bool
) -> None:
    """Raise a ValueError naming the setting when the filter bank's settings are unusable."""
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"Need 0 < sigma_min <= sigma_max, got {sigma_min} and {sigma_max}.")
    if int(num_sigma) != num_sigma or num_sigma < 1:
        raise ValueError(f"num_sigma must be an integer of at least 1, got {num_sigma}.")
    if not (intensity or edges or texture):
        raise ValueError("The filter bank needs at least one of intensity, edges, texture.")


def check_image(image: torch.Tensor | np.ndarray, *, texture: bool) -> torch.Tensor:
    """``image`` as a float32 or float64 tensor of shape (B, C, H, W), or a clear ValueError."""
    x = torch.from_numpy(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) else image
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"The filter bank takes a tensor or an ndarray, got {type(image).__name__}.")
    if x.ndim != 4 or min(x.shape) < 1:
        raise ValueError(f"The filter bank takes a batch of shape (B, C, H, W), got {tuple(x.shape)}.")
    if not x.is_floating_point():
        raise ValueError(f"The filter bank takes floating-point tiles in [0, 1], got {x.dtype}; "
                         "divide uint8 tiles by 255 first.")
    if texture and min(x.shape[-2:]) < 2:
        raise ValueError(f"Texture features need tiles of at least 2 x 2 pixels, got {tuple(x.shape[-2:])}.")
    return x if x.dtype == torch.float64 else x.float()


def gaussian_kernel(sigma: float, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """SciPy's sampled Gaussian of ``sigma``, radius ``int(4 * sigma + 0.5)``, summing to 1."""
    radius = int(TRUNCATE * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return torch.from_numpy(kernel / kernel.sum()).to(device=device, dtype=dtype)


def toeplitz_block(kernel: torch.Tensor, block: int) -> torch.Tensor:
    """Matrix ``T`` of shape (block + k - 1, block) with ``window @ T`` = the correlation.

    Row ``j + i`` of column ``j`` holds ``kernel[i]``: output ``j`` of a block reads the
    ``k`` input samples from ``j`` on (the block's window starts ``k // 2`` before it).
    Its top-left ``(m + k - 1, m)`` corner serves a shorter last block of ``m`` outputs.
    """
    k = kernel.numel()
    matrix = kernel.new_zeros((block + k - 1, block))
    for j in range(block):
        matrix[j : j + k, j] = kernel
    return matrix


def block_starts(n: int, radius: int) -> tuple[int, list[int]]:
    """Block width and the first output of every block along an axis of ``n`` pixels.

    Blocks are at least twice the kernel's reach, so that a window (block and reach on both
    sides) holds no more than twice the outputs it serves.
    """
    block = min(max(BLOCK, 2 * radius), n)
    return block, list(range(0, n, block))


def smooth_width(planes: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Correlate the rows of (N, H, W) planes with ``kernel``, edge pixels repeated.

    One matrix product per block of outputs: its window of the padded rows (a strided view,
    not a copy) times the banded Toeplitz matrix.
    """
    n_planes, h, w = planes.shape
    radius = kernel.numel() // 2
    block, starts = block_starts(w, radius)
    rows = F.pad(planes, (radius, radius), mode="replicate").reshape(n_planes * h, w + 2 * radius)
    matrix = toeplitz_block(kernel, block)
    parts = []
    for start in starts:
        m = min(block, w - start)
        parts.append(rows[:, start : start + m + 2 * radius] @ matrix[: m + 2 * radius, :m])
    return torch.cat(parts, dim=1).reshape(n_planes, h, w)


def smooth_height(planes: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Correlate the columns of (N, H, W) planes with ``kernel``, edge pixels repeated.

    The transposed Toeplitz matrix multiplies each block's window of rows from the left, so
    that no plane is transposed.
    """
    h = planes.shape[-2]
    radius = kernel.numel() // 2
    block, starts = block_starts(h, radius)
    padded = F.pad(planes, (0, 0, radius, radius), mode="replicate")
    matrix = toeplitz_block(kernel, block).T
    parts = []
    for start in starts:
        m = min(block, h - start)
        parts.append(matrix[:m, : m + 2 * radius] @ padded[:, start : start + m + 2 * radius, :])
    return torch.cat(parts, dim=1)


def gaussian(planes: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian smoothing of (N, H, W) planes as :func:`scipy.ndimage.gaussian_filter` does.

    Mode ``'nearest'`` and truncation at 4 sigma, as :func:`skimage.filters.gaussian` calls it.
    """
    kernel = gaussian_kernel(sigma, dtype=torch.float64, device=planes.device)
    if kernel.numel() <= LONGEST_FLOAT32_KERNEL:
        kernel = kernel.to(planes.dtype)
    smoothed = smooth_height(smooth_width(planes.to(kernel.dtype), kernel), kernel)
    return smoothed.to(planes.dtype)


def sobel_magnitude(image: torch.Tensor) -> torch.Tensor:
    """:func:`skimage.filters.sobel` of (..., H, W) maps: ``sqrt((gy**2 + gx**2) / 2)``.

    Each derivative is ``[1, 0, -1]`` along its axis times ``[1, 2, 1] / 4`` across it, with
    the edge pixel repeated (SciPy's ``'reflect'`` at a reach of one pixel). The sums run
    unscaled, 4 times skimage's derivatives, and one exact power of two scales the result.
    """
    shape = image.shape
    p = F.pad(image.reshape(-1, *shape[-2:]), (1, 1, 1, 1), mode="replicate")
    across_rows = (p[:, :-2, :] + p[:, 2:, :]).add_(p[:, 1:-1, :], alpha=2)
    across_cols = (p[:, :, :-2] + p[:, :, 2:]).add_(p[:, :, 1:-1], alpha=2)
    gx = across_rows[:, :, 2:] - across_rows[:, :, :-2]
    gy = across_cols[:, 2:, :] - across_cols[:, :-2, :]
    return gx.mul_(gx).addcmul_(gy, gy).mul_(1 / 32).sqrt_().reshape(shape)


def numpy_gradient(image: torch.Tensor, dim: int) -> torch.Tensor:
    """:func:`numpy.gradient` along ``dim``: central differences inside, one-sided at the ends."""
    return twice_gradient(image, dim).mul_(0.5)


def twice_gradient(image: torch.Tensor, dim: int) -> torch.Tensor:
    """Twice :func:`numpy.gradient` along ``dim``: ``f[i+1] - f[i-1]`` inside, doubled one-sided ends."""
    n = image.shape[dim]
    out = torch.empty_like(image)
    if n > 2:
        torch.sub(image.narrow(dim, 2, n - 2), image.narrow(dim, 0, n - 2), out=out.narrow(dim, 1, n - 2))
    torch.sub(image.narrow(dim, 1, 1), image.narrow(dim, 0, 1), out=out.narrow(dim, 0, 1))
    torch.sub(image.narrow(dim, n - 1, 1), image.narrow(dim, n - 2, 1), out=out.narrow(dim, n - 1, 1))
    out.narrow(dim, 0, 1).mul_(2)
    out.narrow(dim, n - 1, 1).mul_(2)
    return out


def hessian_eigenvalues(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (largest, smallest) of the finite-difference Hessian of (..., H, W) maps.

    The Hessian is scikit-image's texture filter: :func:`numpy.gradient` of
    :func:`numpy.gradient`, and its eigenvalues the closed form of
    :func:`skimage.feature.hessian_matrix_eigvals` for 2-D,
    ``(a + c) / 2 +- sqrt(b**2 + ((a - c) / 2)**2)``. The differences run unscaled (4 times
    the Hessian) and exact powers of two scale the result.
    """
    d_rows = twice_gradient(image, -2)
    h_rr = twice_gradient(d_rows, -2)
    h_rc = twice_gradient(d_rows, -1)
    h_cc = twice_gradient(twice_gradient(image, -1), -1)
    half_trace = (h_rr + h_cc).mul_(0.125)
    # sqrt(16 (a - c)**2 + 64 b**2) = 8 sqrt(((a - c) / 2)**2 + b**2)
    half_gap = h_rr.sub_(h_cc).square_().addcmul_(h_rc, h_rc, value=4).sqrt_().mul_(0.125)
    return half_trace + half_gap, half_trace.sub_(half_gap)
