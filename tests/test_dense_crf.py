"""vwe.dense_crf, the pure-PyTorch dense CRF, against pydensecrf (the reference it must reproduce).

Run with `-s` to see the measured label agreement per image.
"""
from pathlib import Path

import numpy as np
import pydensecrf.densecrf as dcrf
import pytest
import torch
from PIL import Image
from pydensecrf.utils import unary_from_labels, unary_from_softmax

from vwe.dense_crf import (
    Lattice,
    bilateral_features,
    crf_labels_batch,
    crf_labels_torch,
    crf_probs_torch,
    gaussian_features,
    label_unary,
    mean_field,
)

VOC = Path(__file__).parent / "data" / "voc-samples" / "VOC2012"
VOC_IDS = sorted(path.stem for path in (VOC / "JPEGImages").glob("*.jpg"))
# IRNet's label CRF and deeplab-pytorch's softmax CRF (10 iterations each)
LABEL_CRF = {"gt_prob": 0.7, "gaussian_sxy": 3.0, "gaussian_compat": 3.0, "bilateral_sxy": 50.0,
             "bilateral_srgb": 5.0, "bilateral_compat": 10.0, "iterations": 10}
SOFTMAX_CRF = {"gaussian_sxy": 1.0, "gaussian_compat": 3.0, "bilateral_sxy": 67.0, "bilateral_srgb": 3.0,
               "bilateral_compat": 4.0, "iterations": 10}
MIN_AGREEMENT = 0.995


pytestmark = pytest.mark.usefixtures("one_thread")


def _reference(image: np.ndarray, unary: np.ndarray, gaussian_sxy: float, gaussian_compat: float,
               bilateral_sxy: float, bilateral_srgb: float, bilateral_compat: float, iterations: int,
               **_) -> np.ndarray:
    """pydensecrf's marginals, C x H x W, called as vwe.crf does."""
    height, width = image.shape[:2]
    model = dcrf.DenseCRF2D(width, height, unary.shape[0])
    model.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    model.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    model.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=np.array(image, order="C"),
                               compat=bilateral_compat)
    return np.asarray(model.inference(iterations), dtype=np.float32).reshape(-1, height, width)


def _voc_sample(voc_id: str) -> tuple[np.ndarray, np.ndarray]:
    """A genuine VOC image and its class mask (255 -> background), downscaled 3x to keep the test fast."""
    image = Image.open(VOC / "JPEGImages" / f"{voc_id}.jpg").convert("RGB")
    mask = Image.open(VOC / "SegmentationClassAug" / f"{voc_id}.png")
    size = (image.width // 3, image.height // 3)
    image = np.array(image.resize(size, Image.BILINEAR))
    mask = np.asarray(mask.resize(size, Image.NEAREST)).astype(np.int64)
    return image, np.where(mask == 255, 0, mask)


def _perturbed_labels(mask: np.ndarray, n_labels: int, rng: np.random.Generator) -> np.ndarray:
    """A CAM-like label map: classes folded into 0..n_labels-1, shifted a few pixels, 10 % random flips."""
    classes = np.unique(mask)
    labels = np.minimum(np.searchsorted(classes, mask), n_labels - 1)
    labels = np.roll(labels, (int(rng.integers(-4, 5)), int(rng.integers(-6, 7))), axis=(0, 1))
    flip = rng.random(labels.shape) < 0.10
    labels[flip] = rng.integers(0, n_labels, int(flip.sum()))
    return labels


def _noisy_softmax(mask: np.ndarray, rng: np.random.Generator, n_classes: int = 21) -> np.ndarray:
    """A DeepLab-like 21-class softmax: confident on a shifted mask, plus logit noise; C x H x W float32."""
    shifted = np.roll(mask, (int(rng.integers(-4, 5)), int(rng.integers(-6, 7))), axis=(0, 1))
    logits = 4.0 * np.eye(n_classes)[shifted].transpose(2, 0, 1) + rng.normal(0, 1.5, (n_classes, *mask.shape))
    probs = np.exp(logits - logits.max(axis=0))
    return (probs / probs.sum(axis=0)).astype(np.float32)


def _synthetic_images(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random content (every colour different) and piecewise-constant blocks (exactly equal colours, ties)."""
    random = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    blocks = np.zeros((60, 80, 3), dtype=np.uint8)
    for y0, y1, x0, x1, colour in [(0, 60, 0, 80, (30, 60, 200)), (10, 40, 5, 45, (220, 30, 30)),
                                   (25, 60, 30, 80, (40, 200, 60)), (0, 15, 50, 80, (0, 0, 0)),
                                   (45, 60, 0, 20, (255, 255, 255))]:
        blocks[y0:y1, x0:x1] = colour
    return {"random": random, "blocks": blocks}


def _block_mask(shape: tuple[int, ...], rng: np.random.Generator, n_classes: int) -> np.ndarray:
    """A coarse random class map (8 x 8 px cells) for the synthetic images."""
    cells = rng.integers(0, n_classes, (shape[0] // 8 + 1, shape[1] // 8 + 1))
    return np.kron(cells, np.ones((8, 8), dtype=np.int64))[:shape[0], :shape[1]]


def _label_agreement(image: np.ndarray, labels: np.ndarray, n_labels: int) -> float:
    reference = _reference(image, unary_from_labels(labels, n_labels, LABEL_CRF["gt_prob"], zero_unsure=False),
                           **LABEL_CRF).argmax(axis=0)
    ours = crf_labels_torch(image, labels, n_labels, **LABEL_CRF)
    assert ours.shape == labels.shape and ours.dtype == np.uint8
    return float((ours == reference).mean())


def _softmax_agreement(image: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    reference = _reference(image, unary_from_softmax(probs), **SOFTMAX_CRF)
    ours = crf_probs_torch(image, probs, **SOFTMAX_CRF)
    assert ours.shape == probs.shape and ours.dtype == np.float32
    return float((ours.argmax(axis=0) == reference.argmax(axis=0)).mean()), float(np.abs(ours - reference).max())


# --- the lattice -----------------------------------------------------------------------------------------------

def test_filter_is_linear_in_a_constant():
    position = gaussian_features(24, 32, 3.0, "cpu")
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8))
    for features in (position, bilateral_features(image, 50.0, 5.0)):
        lattice = Lattice(features)
        ones = torch.ones(features.shape[0], 1)
        norm = lattice.filter(ones)
        assert norm.shape == (features.shape[0], 1) and (norm > 0).all()
        torch.testing.assert_close(lattice.filter(2.5 * ones), 2.5 * norm)
        two = lattice.filter(torch.cat([ones, 3.0 * ones], dim=1))  # channels are filtered independently
        torch.testing.assert_close(two, torch.cat([norm, 3.0 * norm], dim=1))


def test_symmetric_normalisation_of_constant_features_is_constant():
    features = torch.full((24 * 32, 5), 1.7)
    lattice = Lattice(features)
    ones = torch.ones(features.shape[0], 1)
    norm = lattice.filter(ones)
    torch.testing.assert_close(norm, torch.full_like(norm, float(norm[0])))
    n = 1.0 / torch.sqrt(norm + 1e-20)
    normalised = n * lattice.filter(n * ones)
    torch.testing.assert_close(normalised, torch.ones_like(normalised))


def test_lattice_keeps_groups_apart():
    """Two identical point sets in different groups get the same filter as each set alone."""
    features = gaussian_features(20, 30, 3.0, "cpu")
    values = torch.rand(features.shape[0], 4, generator=torch.Generator().manual_seed(0))
    alone = Lattice(features).filter(values)
    groups = torch.cat([torch.zeros(len(features), dtype=torch.int64), torch.ones(len(features), dtype=torch.int64)])
    both = Lattice(torch.cat([features, features]), groups).filter(torch.cat([values, 2 * values]))
    torch.testing.assert_close(both, torch.cat([alone, 2 * alone]))


def test_lattice_rejects_bad_input():
    with pytest.raises(ValueError, match="float32"):
        Lattice(torch.zeros(10, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="N x d"):
        Lattice(torch.zeros(10))
    lattice = Lattice(torch.zeros(10, 2))
    with pytest.raises(ValueError, match="10 x C"):
        lattice.filter(torch.zeros(9, 1))
    with pytest.raises(ValueError, match="float32"):
        lattice.filter(torch.zeros(10, 1, dtype=torch.float64))


# --- mean field ------------------------------------------------------------------------------------------------

def test_one_iteration_without_pairwise_weight_returns_the_unary_argmax():
    rng = np.random.default_rng(1)
    unary = torch.from_numpy(rng.random((5, 24 * 32)).astype(np.float32))
    image = torch.from_numpy(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    kernels = [(Lattice(gaussian_features(24, 32, 3.0, "cpu")), 0.0),
               (Lattice(bilateral_features(image, 50.0, 5.0)), 0.0)]
    q = mean_field(unary, kernels, iterations=1)
    assert q.shape == unary.shape
    torch.testing.assert_close(q.sum(dim=0), torch.ones(unary.shape[1]))
    assert torch.equal(q.argmax(dim=0), unary.argmin(dim=0))


def test_label_unary_matches_pydensecrf():
    labels = np.random.default_rng(2).integers(0, 4, (6, 7))
    ours = label_unary(torch.from_numpy(labels), 4, 0.7).numpy()
    np.testing.assert_array_equal(ours, unary_from_labels(labels, 4, 0.7, zero_unsure=False))


# --- agreement with pydensecrf ---------------------------------------------------------------------------------

@pytest.mark.parametrize("voc_id", VOC_IDS)
def test_label_crf_agrees_with_pydensecrf_on_voc(voc_id):
    image, mask = _voc_sample(voc_id)
    labels = _perturbed_labels(mask, 3, np.random.default_rng(3))
    agreement = _label_agreement(image, labels, 3)
    print(f"\nlabel CRF   {voc_id} {image.shape[0]}x{image.shape[1]}: {100 * agreement:.3f} % of pixels agree")
    assert agreement >= MIN_AGREEMENT


@pytest.mark.parametrize("voc_id", VOC_IDS)
def test_softmax_crf_agrees_with_pydensecrf_on_voc(voc_id):
    image, mask = _voc_sample(voc_id)
    agreement, max_diff = _softmax_agreement(image, _noisy_softmax(mask, np.random.default_rng(4)))
    print(f"\nsoftmax CRF {voc_id} {image.shape[0]}x{image.shape[1]}: {100 * agreement:.3f} % of pixels agree, "
          f"max |dQ| = {max_diff:.2e}")
    assert agreement >= MIN_AGREEMENT
    assert max_diff < 1e-3


@pytest.mark.parametrize("kind", ["random", "blocks"])
def test_both_crfs_agree_with_pydensecrf_on_synthetic_images(kind):
    rng = np.random.default_rng(5)
    image = _synthetic_images(rng)[kind]
    labels = _perturbed_labels(_block_mask(image.shape, rng, 3), 3, rng)
    label_agreement = _label_agreement(image, labels, 3)
    probs = _noisy_softmax(_block_mask(image.shape, rng, 21), rng)
    softmax_agreement, max_diff = _softmax_agreement(image, probs)
    print(f"\n{kind} {image.shape[0]}x{image.shape[1]}: label CRF {100 * label_agreement:.3f} %, "
          f"softmax CRF {100 * softmax_agreement:.3f} % of pixels agree, max |dQ| = {max_diff:.2e}")
    assert label_agreement >= MIN_AGREEMENT and softmax_agreement >= MIN_AGREEMENT
    assert max_diff < 1e-3


def test_sse_padding_reproduces_pydensecrf_near_the_origin():
    """45 x 63 = 2835 pixels (not a multiple of 4) and a dark top-left corner: pydensecrf's SSE build adds the
    vertices of the all-zero feature to the bilateral lattice, and so must we to match its marginals there."""
    rng = np.random.default_rng(8)
    rows, cols = np.mgrid[:45, :63]
    image = np.clip(np.stack([4 * cols, 4 * rows, 2 * (rows + cols)], axis=2) + rng.integers(0, 6, (45, 63, 3)),
                    0, 255).astype(np.uint8)
    unary = unary_from_softmax(_noisy_softmax(_block_mask(image.shape, rng, 21), rng))
    reference = _reference(image, unary, **LABEL_CRF).reshape(21, -1)
    position = gaussian_features(45, 63, LABEL_CRF["gaussian_sxy"], "cpu")
    colour = bilateral_features(torch.from_numpy(image), LABEL_CRF["bilateral_sxy"], LABEL_CRF["bilateral_srgb"])
    differences = {}
    for padding in (True, False):
        kernels = [(Lattice(position, sse_padding=padding), LABEL_CRF["gaussian_compat"]),
                   (Lattice(colour, sse_padding=padding), LABEL_CRF["bilateral_compat"])]
        q = mean_field(torch.from_numpy(unary), kernels, LABEL_CRF["iterations"]).numpy()
        differences[padding] = float(np.abs(q - reference).max())
    print(f"\nmax |dQ| with SSE padding {differences[True]:.2e}, without {differences[False]:.2e}")
    assert differences[True] < 1e-5
    assert differences[False] > 1e-4  # the padding vertices matter here


# --- batching and input checks ---------------------------------------------------------------------------------

def test_batch_of_two_sizes_equals_one_call_per_image():
    rng = np.random.default_rng(6)
    voc_image, voc_mask = _voc_sample(VOC_IDS[0])
    images = [voc_image[:40, :52], rng.integers(0, 256, (33, 45, 3), dtype=np.uint8)]
    n_labels = [3, 5]
    labels = [_perturbed_labels(voc_mask[:40, :52], 3, rng), _perturbed_labels(_block_mask((33, 45), rng, 5), 5, rng)]
    batch = crf_labels_batch(images, labels, n_labels, **LABEL_CRF)
    for image, label, count, batched in zip(images, labels, n_labels, batch):
        single = crf_labels_torch(image, label, count, **LABEL_CRF)
        assert batched.shape == image.shape[:2] and batched.dtype == np.uint8
        np.testing.assert_array_equal(batched, single)


def test_single_label_and_tensor_inputs():
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    assert not crf_labels_torch(image, np.zeros((24, 32), np.int64), 1).any()
    labels = rng.integers(0, 3, (24, 32))
    from_numpy = crf_labels_torch(image, labels, 3)
    np.testing.assert_array_equal(crf_labels_torch(torch.from_numpy(image), torch.from_numpy(labels), 3), from_numpy)


def test_crf_rejects_bad_input():
    image = np.zeros((24, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        crf_labels_torch(image.astype(np.float32), np.zeros((24, 32), np.int64), 2)
    with pytest.raises(ValueError, match="does not match"):
        crf_labels_torch(image, np.zeros((24, 31), np.int64), 2)
    with pytest.raises(ValueError, match="0..1"):
        crf_labels_torch(image, np.full((24, 32), 2), 2)
    with pytest.raises(ValueError, match="C x H x W"):
        crf_probs_torch(image, np.ones((3, 24, 31), np.float32))
    with pytest.raises(ValueError, match="as many"):
        crf_labels_batch([image], [], [2])
