"""VWL-M memory bank under data parallelism: two gloo processes must end with the single-process codebook."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vwe.models import VisualWords

WORDS, DIM, STEPS, SEED = 8, 4, 3, 5
RANK_IMAGES = (2, 1)  # unequal shares, so each rank's offset into the global batch matters


def batches() -> list[torch.Tensor]:
    """Per step, the global batch N x d x h x w (rank 0's images first), the same in every process."""
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(sum(RANK_IMAGES), DIM, 2, 3, generator=generator) for _ in range(STEPS)]


def run_updates(words: VisualWords, steps: list[torch.Tensor]) -> list[torch.Tensor]:
    torch.manual_seed(SEED)
    history = []
    for features in steps:
        words.update_memory(features, momentum=0.3)
        history.append(words.codebook.clone())
    return history


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=len(RANK_IMAGES))
    try:
        start = sum(RANK_IMAGES[:rank])
        mine = [b[start : start + RANK_IMAGES[rank]] for b in batches()]
        torch.manual_seed(100 + rank)  # the codebook init differs per rank; the first update must overwrite it
        history = run_updates(VisualWords(WORDS, DIM, learnable=False), mine)
        torch.save(history, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_update_equals_single_process_on_concatenated_batch(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=len(RANK_IMAGES), join=True)
    expected = run_updates(VisualWords(WORDS, DIM, learnable=False), batches())
    rows_per_rank = [RANK_IMAGES[0] * 6, RANK_IMAGES[1] * 6]
    first_rows = batches()[0].permute(0, 2, 3, 1).reshape(-1, DIM)
    sampled_from = {int((first_rows == row).all(dim=1).nonzero()) for row in expected[0]}
    # the seed draws rows held by both ranks, so the gather-free sampling path is exercised
    assert min(sampled_from) < rows_per_rank[0] <= max(sampled_from)
    for rank in range(len(RANK_IMAGES)):
        history = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(history[0], expected[0], rtol=0, atol=0)  # the sample is exact
        for got, want in zip(history[1:], expected[1:]):
            torch.testing.assert_close(got, want)
    assert not torch.allclose(expected[1], expected[2])  # the EMA steps moved the codebook
