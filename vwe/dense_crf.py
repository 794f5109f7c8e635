"""A fully-connected CRF in plain PyTorch that reproduces pydensecrf's labels (CPU or CUDA, batched).

pydensecrf (Krähenbühl's DenseCRF) filters with a permutohedral lattice (Adams et al. 2010) built in a C++ hash
table. Here the lattice is built with tensor ops instead: every simplex vertex key is packed into one int64,
`torch.unique` deduplicates the keys (the hash table), `torch.searchsorted` finds each vertex's blur neighbours,
and splat, blur and slice are sparse (CSR) float32 matrix products. The lattice is built with the same float32
operations, in the same order, as pydensecrf's SSE build, so the vertices and barycentric weights are the same
and the marginals agree to float rounding; labels differ only where two labels are (nearly) tied.

Batching: several images share one lattice by putting the image index into the high part of the key, so no
vertex, and so no blur, crosses images; the result per image is the same as one call per image.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Lattice",
    "bilateral_features",
    "crf_labels_batch",
    "crf_labels_torch",
    "crf_probs_torch",
    "gaussian_features",
    "label_unary",
    "mean_field",
    "softmax_unary",
]

_KEY_LIMIT = 2**62  # packed keys (with the image index and the blur offsets) stay well inside int64


class Lattice:
    """The permutohedral lattice of N points with d float32 features (already divided by the kernel widths).

    Built once; `filter` then applies the (approximate) Gaussian kernel exp(-|f_i - f_j|^2 / 2), self included,
    to any N x C values, as often as needed (every mean-field iteration and the normalisation).

    `groups` (optional, N int64 in 0..G-1) marks which image each point belongs to: points of different groups
    never share a vertex, so one lattice filters several images independently.

    `sse_padding` reproduces a quirk of pydensecrf's SSE build, which embeds points 4 at a time and embeds the
    padding of the last block as points with all-zero features: when a group's size is not a multiple of 4, the
    vertices of the origin's simplex exist in its lattice (with no value of their own). They relay values in the
    blur, which moved marginals by up to 6e-3 (and flipped a label) on a VOC image, for pixels near the origin in
    feature space (dark pixels near the top-left corner); so they are added here too.
    """

    def __init__(self, features: Tensor, groups: Tensor | None = None, *, sse_padding: bool = True):
        if not isinstance(features, Tensor) or features.ndim != 2 or features.shape[1] < 1:
            raise ValueError(f"features must be an N x d tensor, got {getattr(features, 'shape', type(features))}")
        if features.dtype != torch.float32:
            raise ValueError(f"features must be float32 (pydensecrf's lattice is float32), got {features.dtype}")
        if features.shape[0] < 1:
            raise ValueError("features must hold at least one point")
        if not torch.isfinite(features).all():
            raise ValueError("features must be finite")
        n, d = features.shape
        if groups is None:
            groups = torch.zeros(n, dtype=torch.int64, device=features.device)
        elif groups.shape != (n,) or groups.dtype != torch.int64 or groups.device != features.device:
            raise ValueError(f"groups must be an int64 tensor of shape ({n},) on {features.device}, got "
                             f"{groups.dtype} {tuple(groups.shape)} on {groups.device}")
        elif groups.min() < 0:
            raise ValueError("groups must be >= 0")
        self.num_points, self.dim = n, d
        self.device = features.device

        if sse_padding:
            features, groups = _add_sse_padding(features, groups)
        elevated = _elevate(features)
        remainder0, rank = _enclosing_simplex(elevated)
        self.weights = _barycentric(elevated, remainder0, rank)[:n]        # N x (d+1)
        coords = _simplex_vertices(remainder0, rank)                       # (N + padding) x (d+1) x d
        keys, strides = _pack_keys(coords, groups)                         # (N + padding) x (d+1)
        vertex_keys, inverse = torch.unique(keys.reshape(-1), sorted=True, return_inverse=True)
        self.num_vertices = vertex_keys.numel()
        self.vertices = inverse.reshape(-1, d + 1)[:n]                     # vertex index per point and remainder
        # pydensecrf slices with w * alpha; alpha corrects the blur's variance (Adams et al.)
        self.alpha = 1.0 / (1.0 + 2.0 ** -d)
        self._splat_matrix, self._slice_matrix = _splat_slice_matrices(self.vertices, self.weights,
                                                                       self.num_vertices, self.alpha)
        self._blur_matrices = [_blur_matrix(minus, plus)
                               for minus, plus in _blur_neighbours(vertex_keys, strides, d)]

    def filter(self, values: Tensor) -> Tensor:
        """Splat N x C values onto the lattice, blur along each of the d+1 axes, slice back: N x C.

        All three steps are sparse float32 matrix products (CSR; cuSPARSE on CUDA, which TF32 settings do not
        touch): 2-4x faster than index_add_ splats and row gathers on the CPU, deterministic there (no atomics),
        and O(N (d+1) C) memory.
        """
        if values.ndim != 2 or values.shape[0] != self.num_points:
            raise ValueError(f"values must be {self.num_points} x C, got {tuple(values.shape)}")
        if values.dtype != torch.float32 or values.device != self.device:
            raise ValueError(f"values must be float32 on {self.device}, got {values.dtype} on {values.device}")
        lattice = self._splat_matrix @ values
        for blur in self._blur_matrices:  # axis 0 first, as pydensecrf
            lattice = blur @ lattice
        return self._slice_matrix @ lattice


def _add_sse_padding(features: Tensor, groups: Tensor) -> tuple[Tensor, Tensor]:
    """Appends one all-zero point to each group whose size is not a multiple of 4 (see `Lattice`)."""
    sizes = torch.bincount(groups)
    padded = torch.nonzero(sizes % 4 != 0).flatten()
    zeros = features.new_zeros(padded.numel(), features.shape[1])
    return torch.cat([features, zeros]), torch.cat([groups, padded])


def _elevate(features: Tensor) -> Tensor:
    """Project d-dim features onto the plane sum = 0 in d+1 dims, scaled so the lattice blur has unit std.

    Same float32 operations in the same order as pydensecrf, so the rounding below picks the same simplex.
    """
    n, d = features.shape
    inv_std_dev = float(np.float32(math.sqrt(2.0 / 3.0) * (d + 1)))  # a float in the C++ code
    scale = torch.tensor([1.0 / math.sqrt((i + 2) * (i + 1)) * inv_std_dev for i in range(d)],
                         dtype=torch.float32, device=features.device)
    elevated = features.new_empty(n, d + 1)
    running = features.new_zeros(n)
    for j in range(d, 0, -1):
        scaled = features[:, j - 1] * scale[j - 1]
        elevated[:, j] = running - float(j) * scaled
        running = running + scaled
    elevated[:, 0] = running
    return elevated


def _enclosing_simplex(elevated: Tensor) -> tuple[Tensor, Tensor]:
    """The nearest remainder-0 lattice point (float, multiples of d+1) and the rank of each coordinate's offset.

    rank[i] = position of coordinate i when the offsets elevated - remainder0 are sorted in decreasing order (ties:
    lower index first); the point is then moved back onto the plane (coordinate sum 0) by wrapping ranks.
    """
    d = elevated.shape[1] - 1
    inv_d1 = torch.tensor(1.0 / (d + 1), dtype=torch.float32, device=elevated.device)
    nearest = torch.round(elevated * inv_d1)  # half to even, as the SSE conversion
    remainder0 = nearest * float(d + 1)
    coord_sum = nearest.sum(dim=1).round().to(torch.int64)

    offset = elevated - remainder0
    rank = torch.zeros_like(elevated, dtype=torch.int64)
    for i in range(d):
        for j in range(i + 1, d + 1):
            smaller = (offset[:, i] < offset[:, j]).to(torch.int64)
            rank[:, i] += smaller
            rank[:, j] += 1 - smaller

    rank = rank + coord_sum[:, None]
    shift = (rank < 0).to(torch.int64) - (rank >= d + 1).to(torch.int64)
    rank = rank + (d + 1) * shift
    remainder0 = remainder0 + float(d + 1) * shift.to(torch.float32)
    return remainder0, rank


def _barycentric(elevated: Tensor, remainder0: Tensor, rank: Tensor) -> Tensor:
    """The point's barycentric weights on its d+1 simplex vertices (vertex r = remainder r), N x (d+1)."""
    n, d1 = elevated.shape
    d = d1 - 1
    inv_d1 = torch.tensor(1.0 / (d + 1), dtype=torch.float32, device=elevated.device)
    offset = (elevated - remainder0) * inv_d1
    weights = elevated.new_zeros(n, d + 2)
    weights.scatter_add_(1, d - rank, offset)
    weights.scatter_add_(1, d - rank + 1, -offset)
    weights[:, 0] += 1.0 + weights[:, d + 1]
    return weights[:, :d + 1].contiguous()


def _simplex_vertices(remainder0: Tensor, rank: Tensor) -> Tensor:
    """Integer coordinates (first d of d+1) of the d+1 vertices of each point's simplex: N x (d+1) x d.

    Vertex r adds r to the coordinates of rank <= d - r and r - (d+1) to the others (the canonical simplex).
    """
    d = rank.shape[1] - 1
    r = torch.arange(d + 1, device=rank.device)
    rank_d = rank[:, None, :d]                                                # N x 1 x d
    step = torch.where(rank_d <= (d - r)[None, :, None], r[None, :, None], (r - (d + 1))[None, :, None])
    return remainder0[:, None, :d].to(torch.int64) + step


def _pack_keys(coords: Tensor, groups: Tensor) -> tuple[Tensor, list[int]]:
    """Mixed-radix int64 keys of the vertex coordinates, image index on top; returns keys and the radix strides.

    Each coordinate is padded by d on both sides so that a blur neighbour (coordinates moved by -1/+d or +1/-d)
    is itself a valid key reached by adding a constant, never a carry into another coordinate or image.
    """
    d = coords.shape[2]
    flat = coords.reshape(-1, d)
    low = flat.amin(dim=0) - d
    high = flat.amax(dim=0) + d
    sizes = (high - low + 1).tolist()
    strides, total = [], 1
    for size in sizes:
        strides.append(total)
        total *= int(size)
    num_groups = int(groups.max().item()) + 1
    if total * num_groups >= _KEY_LIMIT:
        raise ValueError(f"lattice coordinates span {sizes} for {num_groups} images: too many to pack into int64 "
                         f"keys; use larger kernel widths or fewer images per batch")
    keys = groups[:, None] * total
    for i in range(d):
        keys = keys + (coords[:, :, i] - low[i]) * strides[i]
    return keys, strides


def _blur_neighbours(vertex_keys: Tensor, strides: list[int], d: int) -> list[tuple[Tensor, Tensor]]:
    """For each lattice axis j, the indices of each vertex's two neighbours along j (-1 where missing).

    Along axis j < d the neighbours are key - 1 (coordinate j + d) and key + 1 (coordinate j - d); along axis d
    (the implicit last coordinate) all d stored coordinates move by -1 / +1.
    """
    all_minus = -sum(strides)
    neighbours = []
    for j in range(d + 1):
        delta = all_minus + (d + 1) * strides[j] if j < d else all_minus
        neighbours.append((_lookup(vertex_keys, vertex_keys + delta), _lookup(vertex_keys, vertex_keys - delta)))
    return neighbours


def _splat_slice_matrices(vertices: Tensor, weights: Tensor, num_vertices: int,
                          alpha: float) -> tuple[Tensor, Tensor]:
    """Splat (M x N, barycentric weights) and slice (N x M, weights times alpha) as CSR matrices."""
    n, d1 = vertices.shape
    # splat rows = vertices: a stable sort by vertex keeps each vertex's points in pixel order, as pydensecrf adds
    flat_vertices = vertices.reshape(-1)
    order = torch.sort(flat_vertices, stable=True).indices
    crow = _row_pointers(torch.bincount(flat_vertices, minlength=num_vertices))
    splat = _csr(crow, order // d1, weights.reshape(-1)[order], (num_vertices, n))
    scaled = weights * torch.tensor(alpha, dtype=torch.float32, device=weights.device)
    return splat, _csr_from_rows(vertices, scaled, num_vertices)


def _blur_matrix(minus: Tensor, plus: Tensor) -> Tensor:
    """M x M CSR matrix of one axis's [1/2 1 1/2] blur; missing neighbours (value 0 in pydensecrf) are dropped."""
    m = minus.numel()
    cols = torch.stack([minus, torch.arange(m, device=minus.device), plus], dim=1)
    values = torch.tensor([0.5, 1.0, 0.5], dtype=torch.float32, device=minus.device).expand(m, 3)
    return _csr_from_rows(cols, values, m)


def _csr_from_rows(cols: Tensor, values: Tensor, num_cols: int) -> Tensor:
    """CSR matrix whose row i holds values[i, k] at column cols[i, k] (distinct per row; -1 = no entry)."""
    cols, order = torch.sort(cols, dim=1)
    values = values.gather(1, order)
    present = cols >= 0
    if bool(present.all()):  # the slice matrix: every row full, no masking needed
        crow = torch.arange(0, cols.numel() + 1, cols.shape[1], device=cols.device)
        return _csr(crow, cols.reshape(-1), values.reshape(-1), (cols.shape[0], num_cols))
    crow = _row_pointers(present.sum(dim=1))
    return _csr(crow, cols[present], values[present], (cols.shape[0], num_cols))


def _row_pointers(row_sizes: Tensor) -> Tensor:
    crow = torch.zeros(row_sizes.numel() + 1, dtype=torch.int64, device=row_sizes.device)
    crow[1:] = torch.cumsum(row_sizes, dim=0)
    return crow


def _csr(crow: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the matrix product used here is stable
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols.contiguous(), values.contiguous(), shape, check_invariants=False)


def _lookup(sorted_keys: Tensor, queries: Tensor) -> Tensor:
    """Index of each query in sorted_keys, or -1 where it is absent."""
    index = torch.searchsorted(sorted_keys, queries).clamp_(max=sorted_keys.numel() - 1)
    return torch.where(sorted_keys[index] == queries, index, torch.full_like(index, -1))


def gaussian_features(height: int, width: int, sxy: float, device: torch.device | str = "cpu") -> Tensor:
    """DenseCRF2D's `addPairwiseGaussian` features, N x 2: (x / sxy, y / sxy), pixels row-major (y * W + x)."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height} x {width}")
    if not sxy > 0:
        raise ValueError(f"sxy must be positive, got {sxy}")
    return _position_features(height, width, sxy, torch.device(device))


def bilateral_features(image: Tensor, sxy: float, srgb: float) -> Tensor:
    """DenseCRF2D's `addPairwiseBilateral` features, N x 5: (x / sxy, y / sxy, r / srgb, g / srgb, b / srgb)."""
    _check_image_tensor(image)
    if not sxy > 0 or not srgb > 0:
        raise ValueError(f"sxy and srgb must be positive, got {sxy}, {srgb}")
    height, width = image.shape[:2]
    colour = image.reshape(-1, 3).to(torch.float32) / torch.tensor(srgb, dtype=torch.float32, device=image.device)
    return torch.cat([_position_features(height, width, sxy, image.device), colour], dim=1)


def _position_features(height: int, width: int, sxy: float, device: torch.device) -> Tensor:
    # float32 division, like `i / sx` with a float sx in the C++ code
    s = torch.tensor(sxy, dtype=torch.float32, device=device)
    x = torch.arange(width, dtype=torch.float32, device=device) / s
    y = torch.arange(height, dtype=torch.float32, device=device) / s
    return torch.stack([x[None, :].expand(height, width), y[:, None].expand(height, width)], dim=2).reshape(-1, 2)


def mean_field(unary: Tensor, kernels: Sequence[tuple[Lattice, float]], iterations: int) -> Tensor:
    """pydensecrf's `DenseCRF::inference`: Q = softmax(-U), then `iterations` mean-field updates; returns C x N.

    Each kernel is symmetrically normalised (n = 1 / sqrt(filter(1)), message n * filter(n * Q)) and has a Potts
    compatibility of weight w, which pydensecrf applies as -w * message and subtracts: the update is
    softmax(-U + sum_k w_k * message_k), so a positive w rewards agreeing with similar pixels.
    """
    if unary.ndim != 2 or unary.shape[0] < 1:
        raise ValueError(f"unary must be C x N, got {tuple(unary.shape)}")
    if unary.dtype != torch.float32:
        raise ValueError(f"unary must be float32, got {unary.dtype}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    n = unary.shape[1]
    for lattice, _ in kernels:
        if lattice.num_points != n or lattice.device != unary.device:
            raise ValueError(f"every lattice must have {n} points on {unary.device}, got {lattice.num_points} "
                             f"on {lattice.device}")
    neg_unary = -unary.T.contiguous()  # N x C: each pixel's labels contiguous for the row gathers
    terms = [(lattice, _symmetric_norm(lattice), float(weight)) for lattice, weight in kernels]
    q = torch.softmax(neg_unary, dim=1)
    for _ in range(iterations):
        energy = neg_unary.clone()
        for lattice, norm, weight in terms:
            energy += weight * (norm * lattice.filter(norm * q))
        q = torch.softmax(energy, dim=1)
    return q.T.contiguous()


def _symmetric_norm(lattice: Lattice) -> Tensor:
    """NORMALIZE_SYMMETRIC: 1 / sqrt(filter(ones) + 1e-20) per point, N x 1 (computed in double, stored float)."""
    ones = torch.ones(lattice.num_points, 1, dtype=torch.float32, device=lattice.device)
    return (1.0 / torch.sqrt(lattice.filter(ones).double() + 1e-20)).float()


def label_unary(labels: Tensor, n_labels: int, gt_prob: float) -> Tensor:
    """pydensecrf's `unary_from_labels(zero_unsure=False)`: C x N, -log(gt_prob) on the given label,
    -log((1 - gt_prob) / (C - 1)) on the others."""
    if not 0 < gt_prob < 1:
        raise ValueError(f"gt_prob must be in (0, 1), got {gt_prob}")
    if n_labels < 2:
        raise ValueError(f"a label unary needs n_labels >= 2, got {n_labels}")
    flat = labels.reshape(-1)
    other = float(np.float32(-np.log((1.0 - gt_prob) / (n_labels - 1))))
    given = float(np.float32(-np.log(gt_prob)))
    unary = torch.full((n_labels, flat.numel()), other, dtype=torch.float32, device=labels.device)
    unary[flat, torch.arange(flat.numel(), device=labels.device)] = given
    return unary


def softmax_unary(probs: Tensor) -> Tensor:
    """pydensecrf's `unary_from_softmax`: -log(clip(p, 1e-5, 1)), C x N."""
    return -torch.log(probs.reshape(probs.shape[0], -1).clamp(1e-5, 1.0))


def crf_labels_torch(image: np.ndarray | Tensor, labels: np.ndarray | Tensor, n_labels: int, *, gt_prob: float = 0.7,
                     gaussian_sxy: float = 3.0, gaussian_compat: float = 3.0, bilateral_sxy: float = 50.0,
                     bilateral_srgb: float = 5.0, bilateral_compat: float = 10.0, iterations: int = 10,
                     device: torch.device | str = "cpu") -> np.ndarray:
    """Refines an H x W label map (0..n_labels-1) like `vwe.crf.crf_labels` (IRNet's label CRF); uint8 H x W."""
    return crf_labels_batch([image], [labels], [n_labels], gt_prob=gt_prob, gaussian_sxy=gaussian_sxy,
                            gaussian_compat=gaussian_compat, bilateral_sxy=bilateral_sxy,
                            bilateral_srgb=bilateral_srgb, bilateral_compat=bilateral_compat,
                            iterations=iterations, device=device)[0]


def crf_labels_batch(images: Sequence[np.ndarray | Tensor], labels: Sequence[np.ndarray | Tensor],
                     n_labels: Sequence[int], *, gt_prob: float = 0.7, gaussian_sxy: float = 3.0,
                     gaussian_compat: float = 3.0, bilateral_sxy: float = 50.0, bilateral_srgb: float = 5.0,
                     bilateral_compat: float = 10.0, iterations: int = 10,
                     device: torch.device | str = "cpu") -> list[np.ndarray]:
    """`crf_labels_torch` for several images (sizes and label counts may differ) in one lattice per kernel.

    Images with fewer labels get padding labels of huge energy (probability exactly 0), which neither receive
    nor send messages, so each image's labels are those of a call on its own.
    """
    if not (len(images) == len(labels) == len(n_labels)) or not images:
        raise ValueError(f"need as many images, label maps and label counts (>= 1), got {len(images)}, "
                         f"{len(labels)}, {len(n_labels)}")
    device = torch.device(device)
    rgb = [_image_tensor(image, device) for image in images]
    maps = [_label_tensor(label, image.shape[:2], count, device) for label, image, count in zip(labels, rgb, n_labels)]
    sizes = [image.shape[0] * image.shape[1] for image in rgb]
    results: list[np.ndarray | None] = [None] * len(rgb)
    crf = [i for i, count in enumerate(n_labels) if count > 1]
    for i in set(range(len(rgb))) - set(crf):  # one label: nothing to choose (pydensecrf's unary divides by C - 1)
        results[i] = np.zeros(tuple(rgb[i].shape[:2]), dtype=np.uint8)
    if crf:
        width = max(n_labels[i] for i in crf)
        unary = torch.cat([_pad_labels(label_unary(maps[i], n_labels[i], gt_prob), width) for i in crf], dim=1)
        q = _batched_mean_field([rgb[i] for i in crf], unary, gaussian_sxy, gaussian_compat, bilateral_sxy,
                                bilateral_srgb, bilateral_compat, iterations)
        found = q.argmax(dim=0).to(torch.uint8).cpu()
        for i, part in zip(crf, torch.split(found, [sizes[i] for i in crf])):
            results[i] = part.reshape(rgb[i].shape[:2]).numpy()
    return results


def crf_probs_torch(image: np.ndarray | Tensor, probs: np.ndarray | Tensor, *, gaussian_sxy: float = 1.0,
                    gaussian_compat: float = 3.0, bilateral_sxy: float = 67.0, bilateral_srgb: float = 3.0,
                    bilateral_compat: float = 4.0, iterations: int = 10,
                    device: torch.device | str = "cpu") -> np.ndarray:
    """Refines C x H x W class probabilities like `vwe.crf.crf_probs` (deeplab-pytorch's CRF); C x H x W float32."""
    device = torch.device(device)
    rgb = _image_tensor(image, device)
    probs = torch.as_tensor(probs, device=device)
    if probs.ndim != 3 or probs.shape[1:] != rgb.shape[:2] or probs.shape[0] < 1:
        raise ValueError(f"probs must be C x H x W with H x W = {tuple(rgb.shape[:2])}, got {tuple(probs.shape)}")
    if not probs.is_floating_point():
        raise ValueError(f"probs must be floating point, got {probs.dtype}")
    unary = softmax_unary(probs.to(torch.float32))
    q = _batched_mean_field([rgb], unary, gaussian_sxy, gaussian_compat, bilateral_sxy, bilateral_srgb,
                            bilateral_compat, iterations)
    return q.reshape(probs.shape).cpu().numpy()


def _batched_mean_field(images: list[Tensor], unary: Tensor, gaussian_sxy: float, gaussian_compat: float,
                        bilateral_sxy: float, bilateral_srgb: float, bilateral_compat: float,
                        iterations: int) -> Tensor:
    """DenseCRF2D with a Gaussian and a bilateral Potts kernel over the concatenated pixels of `images`."""
    groups = torch.cat([torch.full((image.shape[0] * image.shape[1],), i, dtype=torch.int64, device=image.device)
                        for i, image in enumerate(images)])
    position = torch.cat([gaussian_features(image.shape[0], image.shape[1], gaussian_sxy, image.device)
                          for image in images])
    colour = torch.cat([bilateral_features(image, bilateral_sxy, bilateral_srgb) for image in images])
    kernels = [(Lattice(position, groups), gaussian_compat), (Lattice(colour, groups), bilateral_compat)]
    return mean_field(unary, kernels, iterations)


def _pad_labels(unary: Tensor, width: int) -> Tensor:
    """Adds labels of energy 1e30 (softmax probability exactly 0) up to `width` labels."""
    if unary.shape[0] == width:
        return unary
    pad = unary.new_full((width - unary.shape[0], unary.shape[1]), 1e30)
    return torch.cat([unary, pad])


def _image_tensor(image: np.ndarray | Tensor, device: torch.device) -> Tensor:
    if not isinstance(image, Tensor):
        image = torch.from_numpy(np.ascontiguousarray(np.asarray(image)))
    _check_image_tensor(image)
    return image.to(device)


def _check_image_tensor(image: Tensor) -> None:
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"the CRF needs the raw H x W x 3 uint8 RGB image, got {image.dtype} {tuple(image.shape)}")


def _label_tensor(labels: np.ndarray | Tensor, shape: Sequence[int], n_labels: int, device: torch.device) -> Tensor:
    labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels)
    if tuple(labels.shape) != tuple(shape):
        raise ValueError(f"label map shape {tuple(labels.shape)} does not match image {tuple(shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    if not 1 <= n_labels <= 256:
        raise ValueError(f"n_labels must be in 1..256, got {n_labels}")
    labels = labels.to(device=device, dtype=torch.int64)
    if labels.numel() and (labels.min() < 0 or labels.max() >= n_labels):
        raise ValueError(f"labels must lie in 0..{n_labels - 1}, got {int(labels.min())}..{int(labels.max())}")
    return labels
