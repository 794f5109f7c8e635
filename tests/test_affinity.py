"""IRNet's affinities and random walk (vwe.affinity) against hand-built cases and a dense oracle written here from
the reference's definition: A[i, j] = 1 - max edge on the path, T = A^beta / column sums, cam (1 - edge) T^(2^k) by
squaring the dense matrix k times."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vwe.affinity import (affinity_labels, path_affinity, path_cells, path_directions, random_walk, transition_weights,
                          walk_to_label)
from vwe.losses import affinity_loss


def test_the_directions_are_the_forward_half_of_the_disc():
    assert len(path_directions(5)) == 34 and len(path_directions(10)) == 152
    assert path_directions(2) == ((0, 1), (1, -1), (1, 0), (1, 1))
    for radius in (3, 5, 10):
        both = set(path_directions(radius)) | {(-dy, -dx) for dy, dx in path_directions(radius)}
        disc = {(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
                if 0 < dy * dy + dx * dx < radius * radius}
        assert both == disc and len(both) == 2 * len(path_directions(radius))


def test_path_cells_are_the_cells_within_one_of_the_line():
    assert path_cells((0, 3)) == ((0, 0), (0, 1), (0, 2), (0, 3))
    assert path_cells((1, -1)) == ((0, -1), (0, 0), (1, -1), (1, 0))
    assert set(path_cells((2, 1))) == {(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)}  # (0, 1): 0.9 from the line
    assert set(path_cells((3, 0))) == {(0, 0), (1, 0), (2, 0), (3, 0)}


def test_affinity_is_one_minus_the_strongest_edge_on_the_path():
    edge = torch.zeros(1, 3, 4)
    edge[0, 1, 2] = 0.9  # one strong boundary cell
    edge[0, 0, 0] = 0.2
    affinity = path_affinity(edge, radius=2)  # directions (0, 1), (1, -1), (1, 0), (1, 1)
    right, down_left, down, down_right = affinity[0]
    assert right[0, 0] == pytest.approx(0.8)  # path (0,0)-(0,1): max 0.2
    assert right[1, 1] == pytest.approx(0.1) and right[1, 2] == pytest.approx(0.1)  # both touch (1, 2)
    assert right[0, 3] == 0 and right[2, 3] == 0  # off the grid
    assert down[0, 2] == pytest.approx(0.1) and down[0, 1] == pytest.approx(1.0)
    assert down[2, 0] == 0  # off the grid
    assert down_right[0, 1] == pytest.approx(0.1)  # (0,1)-(1,2) ends on the boundary
    assert down_left[0, 0] == 0  # (1, -1) is off the grid
    assert down_left[0, 3] == pytest.approx(0.1)  # the path (0,3)-(1,2) crosses (0,2), (0,3), (1,2), (1,3)


def test_affinity_labels_sort_the_pairs_by_their_labels():
    labels = torch.tensor([[[0, 0, 1], [0, 255, 1], [2, 2, 1]]])
    background, foreground, negative = affinity_labels(labels, radius=2)
    right, down_left, down, down_right = range(4)
    assert background[0, right, 0, 0] and not foreground[0, right, 0, 0]
    assert negative[0, right, 0, 1]  # 0 vs 1
    assert foreground[0, down, 0, 2] and foreground[0, down, 1, 2]  # 1 over 1
    assert foreground[0, right, 2, 0]  # 2 next to 2
    assert negative[0, down, 1, 0]  # 0 over 2
    assert not (background | foreground | negative)[0, :, 1, 1].any()  # the unsure cell is in no pair
    assert not (background | foreground | negative)[0, down, 0, 1].any()  # its pairs from above neither
    assert not (background | foreground | negative)[0, right, :, 2].any()  # off the grid
    assert not (background | foreground | negative)[0, down, 2].any()
    # each ordered neighbour pair of valid cells is in exactly one mask
    total = (background.int() + foreground.int() + negative.int())
    assert total.max() == 1


def test_the_loss_rewards_affinities_that_follow_the_labels():
    labels = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1]]])
    masks = affinity_labels(labels, radius=2)
    good_edge = torch.tensor([[[0.0, 0.9, 0.9, 0.0], [0.0, 0.9, 0.9, 0.0]]])
    bad_edge = torch.tensor([[[0.9, 0.0, 0.0, 0.9], [0.9, 0.0, 0.0, 0.9]]])
    good, _ = affinity_loss(path_affinity(good_edge, 2), *masks)
    bad, terms = affinity_loss(path_affinity(bad_edge, 2), *masks)
    assert good < bad and set(terms) == {"bg_pos", "fg_pos", "neg"}


def _oracle_path(dy: int, dx: int) -> list[tuple[int, int]]:
    cells = []
    for y in range(min(0, dy), max(0, dy) + 1):
        for x in range(min(0, dx), max(0, dx) + 1):
            if (dy * x - dx * y) ** 2 / (dy * dy + dx * dx) < 1:
                cells.append((y, x))
    return cells


def dense_walk(cam: np.ndarray, edge: np.ndarray, radius: int, beta: float, exp_times: int) -> np.ndarray:
    """The reference: a dense HW x HW affinity matrix, squared exp_times times (float64)."""
    height, width = edge.shape
    n = height * width
    affinity = np.eye(n)
    for y in range(height):
        for x in range(width):
            for dy in range(-radius + 1, radius):
                for dx in range(-radius + 1, radius):
                    ty, tx = y + dy, x + dx
                    if not 0 < dy * dy + dx * dx < radius * radius or not (0 <= ty < height and 0 <= tx < width):
                        continue
                    top = max(edge[y + cy, x + cx] for cy, cx in _oracle_path(dy, dx))
                    affinity[y * width + x, ty * width + tx] = 1 - top
    transition = affinity ** beta
    transition /= transition.sum(axis=0, keepdims=True)
    for _ in range(exp_times):
        transition = transition @ transition
    return ((cam * (1 - edge)).reshape(len(cam), n) @ transition).reshape(cam.shape)


@pytest.mark.parametrize("size,radius,exp_times", [((5, 7), 3, 4), ((6, 5), 5, 8), ((4, 9), 4, 8)])
def test_the_sparse_walk_equals_the_dense_matrix_power(size, radius, exp_times):
    rng = np.random.default_rng(sum(size) + radius)
    edge = rng.random(size) ** 3  # mostly low, a few strong boundaries
    cam = rng.random((2, *size))
    expected = dense_walk(cam, edge, radius, beta=10.0, exp_times=exp_times)
    walked, = random_walk([torch.from_numpy(cam)], [torch.from_numpy(edge)], radius, 10.0, exp_times)
    np.testing.assert_allclose(walked.numpy(), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    walked32, = random_walk([torch.from_numpy(cam).float()], [torch.from_numpy(edge).float()], radius, 10.0,
                            exp_times)
    np.testing.assert_allclose(walked32.numpy(), expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_a_batch_of_sizes_walks_as_each_image_alone():
    rng = np.random.default_rng(3)
    shapes = [(1, 6, 8), (3, 4, 5), (0, 5, 5), (2, 7, 3)]
    cams = [torch.from_numpy(rng.random(s)) for s in shapes]  # float64: equal up to rounding
    edges = [torch.from_numpy(rng.random(s[1:]) ** 2) for s in shapes]
    together = random_walk(cams, edges, radius=3, beta=10.0, exp_times=5)
    for cam, edge, walked in zip(cams, edges, together):
        alone, = random_walk([cam], [edge], radius=3, beta=10.0, exp_times=5)
        assert walked.shape == cam.shape
        torch.testing.assert_close(walked, alone, rtol=1e-12, atol=1e-12)


def test_each_column_of_the_transition_sums_to_one():
    edge = torch.rand(2, 6, 7)
    weights = transition_weights(edge, radius=4, beta=10.0)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2, 6, 7))


def test_the_walk_stops_at_a_boundary():
    # a wall of edges down the middle: the left half's CAM stays on the left
    edge = torch.zeros(8, 12)
    edge[:, 6] = 1.0
    cam = torch.zeros(1, 8, 12)
    cam[0, 3, 2] = 1.0
    walked, = random_walk([cam], [edge], radius=5, beta=10.0, exp_times=8)
    assert walked[0, :, :6].sum() > 0.99 * walked.sum() and walked[0, :, 7:].sum() < 1e-6
    # and spreads over its side
    assert (walked[0, :, :6] > 0.01 * walked.max()).float().mean() > 0.5


def test_walk_to_label_upsamples_normalises_and_maps_the_keys():
    walked = torch.zeros(2, 2, 3)
    walked[0, 0, 0] = 4.0
    walked[1, 1, 2] = 2.0  # half the global max: still above 0.25
    label = walk_to_label(walked, np.array([4, 11]), (7, 10), background_score=0.25)
    assert label.shape == (7, 10) and label.dtype == np.uint8
    assert label[1, 1] == 5 and label[6, 9] == 12 and label[0, 9] == 0
    assert set(np.unique(label)) == {0, 5, 12}
    assert (walk_to_label(torch.zeros(0, 2, 3), np.array([], np.int64), (7, 10)) == 0).all()
