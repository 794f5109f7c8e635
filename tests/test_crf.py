import numpy as np
import pytest

from vwe.config import CrfConfig
from vwe.crf import confident_pseudo_label, crf_labels, crf_probs

H, W = 40, 60


def _two_region_image(seed: int = 0) -> np.ndarray:
    """Red left half, blue right half (edge between columns 29 and 30), with mild noise."""
    rng = np.random.default_rng(seed)
    image = np.zeros((H, W, 3), dtype=np.float64)
    image[:, : W // 2] = (210, 40, 40)
    image[:, W // 2:] = (40, 40, 210)
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _noisy_labels(seed: int = 1) -> np.ndarray:
    """The two regions with the boundary 6 columns too far left and 15% of pixels flipped."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((H, W), dtype=np.int64)
    labels[:, W // 2 - 6:] = 1
    flip = rng.random((H, W)) < 0.15
    labels[flip] = 1 - labels[flip]
    return labels


def _truth() -> np.ndarray:
    truth = np.zeros((H, W), dtype=np.int64)
    truth[:, W // 2:] = 1
    return truth


def test_crf_labels_snaps_noisy_labels_to_the_colour_edge():
    labels = _noisy_labels()
    refined = crf_labels(_two_region_image(), labels, 2)
    assert refined.shape == (H, W) and refined.dtype == np.uint8
    assert (labels == _truth()).mean() < 0.8
    assert (refined == _truth()).mean() > 0.99
    assert not refined[:, W // 2 - 6: W // 2].any()  # the mislabelled band went back to the red region


def test_crf_labels_only_uses_the_given_labels():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, (H, W))
    refined = crf_labels(rng.integers(0, 256, (H, W, 3), dtype=np.uint8), labels, 3)
    assert set(np.unique(refined)) <= {0, 1, 2}
    single = crf_labels(_two_region_image(), np.zeros((H, W), np.int64), 1)
    assert single.shape == (H, W) and not single.any()


def test_crf_rejects_a_normalised_image():
    image = _two_region_image().astype(np.float32) / 255
    with pytest.raises(ValueError, match="uint8"):
        crf_labels(image, _noisy_labels(), 2)
    with pytest.raises(ValueError, match="0..1"):
        crf_labels(_two_region_image(), _noisy_labels() + 1, 2)


def test_crf_probs_returns_marginals_that_follow_the_edge():
    labels = _noisy_labels()
    probs = np.where(labels[None] == np.arange(2)[:, None, None], 0.6, 0.4).astype(np.float32)
    q = crf_probs(_two_region_image(), probs)
    assert q.shape == (2, H, W) and q.dtype == np.float32
    np.testing.assert_allclose(q.sum(axis=0), 1.0, atol=1e-4)
    assert (q.argmax(axis=0) == _truth()).mean() > 0.99
    read_only = _two_region_image()
    read_only.flags.writeable = False  # as Ray Data hands out images from its object store
    np.testing.assert_array_equal(crf_probs(read_only, probs), q)


def _stripes() -> tuple[np.ndarray, np.ndarray]:
    """Three colour stripes with CAM scores 0.5 (confident fg), 0.1 (unsure) and 0.01 (confident bg) for one class."""
    image = np.zeros((H, W, 3), dtype=np.uint8)
    image[:, :20] = (200, 30, 30)
    image[:, 20:40] = (30, 200, 30)
    image[:, 40:] = (30, 30, 200)
    high_res = np.zeros((1, H, W), dtype=np.float32)
    high_res[0, :, :20] = 0.5
    high_res[0, :, 20:40] = 0.1
    high_res[0, :, 40:] = 0.01
    return image, high_res


@pytest.mark.parametrize("crf", [False, True])
def test_confident_pseudo_label_marks_disagreement_as_ignore(crf):
    image, high_res = _stripes()
    label = confident_pseudo_label(image, high_res, np.array([6]), fg_background_score=0.30, bg_background_score=0.05,
                                   crf=CrfConfig(enabled=crf))
    assert label.dtype == np.uint8 and label.shape == (H, W)
    # fg map: class 7 | bg | bg;  bg map: class 7 | class 7 | bg  ->  7 | 255 | 0
    interior = slice(3, 17), slice(23, 37), slice(43, 57)  # away from the stripe edges
    assert (label[:, interior[0]] == 7).all()
    assert (label[:, interior[1]] == 255).all()
    assert (label[:, interior[2]] == 0).all()
    if not crf:
        assert set(np.unique(label)) == {0, 7, 255}


def test_confident_pseudo_label_without_classes_is_background():
    image, high_res = _stripes()
    label = confident_pseudo_label(image, high_res[:0], np.zeros(0, np.int64))
    assert label.shape == (H, W) and not label.any()


