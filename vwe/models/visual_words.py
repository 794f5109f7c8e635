"""Visual words: a codebook, cosine soft assignment, word histogram and word labels (paper eq. 1-3, METHOD §1.3).

The codebook is either learned (VWE, VWL-L: a parameter trained through the word-to-image loss) or a memory bank
(VWL-M: a buffer moved towards the mean of the features assigned to each word, once per step, METHOD §1.7).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

_EMPTY_WORD_EPS = 1e-4  # added to word counts before dividing, as the reference does


class VisualWordsOutput(NamedTuple):
    assignments: Tensor  # N x k x h x w: softmax over the k words of the cosine similarity (temperature 1)
    histogram: Tensor  # N x k: spatial sum of the assignments
    word_labels: Tensor  # N x k float multi-hot: word j is the nearest word at one location or more; no gradient


class VisualWords(nn.Module):
    """Assigns each feature vector softly to k visual words by cosine similarity.

    Gradients never reach the features (they are detached); with a learned codebook they reach the codebook.

    Args:
        num_words: codebook size k.
        dim: feature channels d.
        learnable: True for a trained codebook parameter; False for a memory bank updated by `update_memory`.
    """

    def __init__(self, num_words: int, dim: int, learnable: bool = True) -> None:
        super().__init__()
        self.num_words = num_words
        codebook = torch.empty(num_words, dim)
        nn.init.kaiming_normal_(codebook, a=math.sqrt(5))  # N(0, 1/(3d)), METHOD §1.3
        self.codebook: Tensor
        if learnable:
            self.codebook = nn.Parameter(codebook)
        else:
            self.register_buffer("codebook", codebook)
            # the first update replaces the random codebook by sampled features; persisted so a resume does not redo it
            self.register_buffer("initialised", torch.tensor(False))

    @property
    def learnable(self) -> bool:
        return isinstance(self.codebook, nn.Parameter)

    def similarity(self, features: Tensor) -> Tensor:
        """Cosine similarity of detached features (N x d x h x w) to each word: N x k x h x w."""
        unit_features = F.normalize(features.detach(), dim=1)
        unit_words = F.normalize(self.codebook, dim=1)
        return F.conv2d(unit_features, unit_words[:, :, None, None].to(unit_features.dtype))

    def forward(self, features: Tensor) -> VisualWordsOutput:
        # at least fp32 even under autocast: the assignments are near-uniform (|cos| <= 1, temperature 1) and the
        # word labels come from small cosine differences that bf16 would blur; fp64 stays fp64 (numerical checks)
        with torch.autocast(features.device.type, enabled=False):
            similarity = self.similarity(features.to(torch.promote_types(features.dtype, torch.float32)))
            assignments = similarity.softmax(dim=1)
            # a spatial sum, not a mean: its scale grows with the feature map, as in the reference (METHOD P5)
            histogram = assignments.sum(dim=(2, 3))
            nearest = similarity.argmax(dim=1).flatten(1)
            word_labels = torch.zeros_like(histogram).scatter_(1, nearest, 1.0).detach()
        return VisualWordsOutput(assignments, histogram, word_labels)

    @torch.no_grad()
    def update_memory(self, features: Tensor, momentum: float) -> None:
        """One memory-bank step on a batch of raw features N x d x h x w (METHOD §1.7).

        The first call replaces the codebook by k feature vectors drawn uniformly with replacement (torch's
        global CPU generator on rank 0). Later calls assign every location to its nearest word (cosine) and set
        codebook_j <- momentum * mean_j + (1 - momentum) * codebook_j, where mean_j is the mean of the raw features
        assigned to word j (0 for an unused word). When torch.distributed is initialised every rank must call this
        with its own batch; the result, identical on all ranks, equals one call on the concatenated batch.
        """
        if self.learnable:
            raise RuntimeError("update_memory needs a memory-bank codebook (VisualWords(..., learnable=False))")
        rows = features.detach().to(self.codebook.dtype).permute(0, 2, 3, 1).reshape(-1, features.shape[1])
        if not bool(self.initialised):
            self.codebook.copy_(_sample_rows(rows, self.num_words))
            self.initialised.fill_(True)
            return
        nearest = (F.normalize(rows, dim=1) @ F.normalize(self.codebook, dim=1).T).argmax(dim=1)
        sums = torch.zeros_like(self.codebook).index_add_(0, nearest, rows)
        counts = torch.bincount(nearest, minlength=self.num_words).to(rows.dtype)
        if _distributed():
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        means = sums / (counts[:, None] + _EMPTY_WORD_EPS)
        self.codebook.mul_(1.0 - momentum).add_(means, alpha=momentum)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _sample_rows(rows: Tensor, count: int) -> Tensor:
    """`count` rows drawn uniformly with replacement from the rows of all ranks together, in rank order."""
    if not _distributed():
        return rows[torch.randint(rows.shape[0], (count,)).to(rows.device)]
    gathered = [torch.zeros(1, dtype=torch.long, device=rows.device) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, torch.tensor([rows.shape[0]], device=rows.device))
    sizes = torch.cat(gathered).tolist()
    start, total = sum(sizes[: dist.get_rank()]), sum(sizes)
    index = torch.randint(total, (count,)).to(rows.device)
    dist.broadcast(index, src=0)
    # each rank fills the rows it holds and zeros elsewhere; the sum over ranks is the full sample
    picked = torch.zeros(count, rows.shape[1], dtype=rows.dtype, device=rows.device)
    mine = (index >= start) & (index < start + rows.shape[0])
    picked[mine] = rows[index[mine] - start]
    dist.all_reduce(picked)
    return picked
