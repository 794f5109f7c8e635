import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vwe.cam import (
    CamResult,
    batched_cams,
    cam_argmax,
    cam_is_complete,
    cam_to_label,
    load_cam,
    multiscale_cam,
    normalize_image,
    save_cam,
)
from vwe.data.pil_resize import pil_bicubic_resize
from vwe.errors import DataError


class ConstantCam(nn.Module):
    """CAM of class c is c + 1 everywhere on the stride-16 grid; records every input batch."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        n, _, h, w = x.shape
        values = torch.arange(1, 21, dtype=torch.float32).view(1, 20, 1, 1)
        return values.expand(n, 20, -(-h // 16), -(-w // 16)).clone()


class RampCam(nn.Module):
    """CAM = column index on the stride-4 grid for every class: ignores the image, so it is not flip-symmetric."""

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        columns = torch.arange(-(-w // 4), dtype=torch.float32)
        return columns.expand(n, 20, -(-h // 4), -1).clone()


class TinyCamNet(nn.Module):
    """A fixed random stride-16 conv + ReLU, the shape of the real classifier's CAM head."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 20, kernel_size=16, stride=16, padding=4)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator) * 0.05)
            self.conv.bias.fill_(0.5)  # keeps every class map non-zero somewhere

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


def _image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _labels(*classes: int) -> np.ndarray:
    labels = np.zeros(20, dtype=np.float32)
    labels[list(classes)] = 1
    return labels


def test_normalize_image_uses_imagenet_statistics():
    image = np.zeros((2, 3, 3), dtype=np.uint8)
    image[0, 0] = (255, 0, 51)
    x = normalize_image(image)
    assert x.shape == (3, 2, 3) and x.dtype == torch.float32
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0.2 - 0.406) / 0.225]
    assert torch.allclose(x[:, 0, 0], torch.tensor(expected), atol=1e-6)


def test_multiscale_cam_shapes_keys_scales_and_flip_inputs():
    model = ConstantCam()
    result = multiscale_cam(model, _image(37, 53, 0), _labels(2, 7, 19))
    assert result.keys.dtype == np.int64 and result.keys.tolist() == [2, 7, 19]
    assert result.cam.shape == (3, 10, 14) and result.cam.dtype == np.float32  # ceil(37/4), ceil(53/4)
    assert result.high_res.shape == (3, 37, 53) and result.high_res.dtype == np.float32
    # round(37 * s), round(53 * s) for s = 1, 0.5, 1.5, 2 (Python rounds halves to even: 18.5 -> 18, 26.5 -> 26)
    assert [tuple(x.shape) for x in model.inputs] == [(2, 3, 37, 53), (2, 3, 18, 26), (2, 3, 56, 80), (2, 3, 74, 106)]
    for x in model.inputs:
        assert torch.equal(x[1], x[0].flip(-1))
    # A constant CAM stays constant through resizing and summing, so every normalised map is 1 (up to the 1e-5).
    np.testing.assert_allclose(result.cam, 1.0, atol=1e-5)
    np.testing.assert_allclose(result.high_res, 1.0, atol=1e-5)


def test_multiscale_cam_feeds_pil_bicubic_scaled_image():
    model = ConstantCam()
    image = _image(20, 30, 1)
    multiscale_cam(model, image, _labels(0), scales=(1.0, 0.5))
    expected = normalize_image(np.asarray(Image.fromarray(image).resize((15, 10), Image.Resampling.BICUBIC)))
    assert torch.equal(model.inputs[1][0], expected)


def test_multiscale_cam_merges_flip_by_max():
    # Ramp over the 9 stride-4 columns: 0..8; flipped back: 8..0; the max is 8 7 6 5 4 5 6 7 8 (a sum would be flat).
    result = multiscale_cam(RampCam(), _image(20, 36, 2), _labels(4), scales=(1.0,))
    expected_row = np.array([8, 7, 6, 5, 4, 5, 6, 7, 8]) / 8
    assert result.cam.shape == (1, 5, 9)
    np.testing.assert_allclose(result.cam[0], np.broadcast_to(expected_row, (5, 9)), rtol=1e-5)


def test_multiscale_cam_normalises_each_class_to_max_one():
    result = multiscale_cam(TinyCamNet(), _image(45, 61, 3), _labels(1, 5, 12))
    np.testing.assert_allclose(result.high_res.max(axis=(1, 2)), 1.0, atol=1e-5)
    np.testing.assert_allclose(result.cam.max(axis=(1, 2)), 1.0, atol=1e-5)
    assert result.high_res.min() >= 0


def test_multiscale_cam_without_classes_gives_empty_maps():
    result = multiscale_cam(TinyCamNet(), _image(20, 24, 4), _labels())
    assert result.keys.shape == (0,) and result.cam.shape == (0, 5, 6) and result.high_res.shape == (0, 20, 24)


def test_scales_must_start_at_one():
    with pytest.raises(ValueError, match="scales must be positive and start with 1.0"):
        multiscale_cam(ConstantCam(), _image(16, 16, 0), _labels(1), scales=(0.5, 1.0))


@pytest.mark.parametrize("size", [(37, 53), (20, 90), (91, 20), (5, 3)])
def test_pil_bicubic_resize_is_bit_exact(size):
    image = _image(*size, seed=5)
    batch = torch.from_numpy(image).permute(2, 0, 1)[None]
    for scale in (0.5, 0.75, 1.5, 2.0):
        out_h, out_w = max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
        expected = np.asarray(Image.fromarray(image).resize((out_w, out_h), Image.Resampling.BICUBIC))
        resized = pil_bicubic_resize(batch, (out_h, out_w))[0].permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(resized, expected)


@pytest.mark.parametrize("on_device", [True, False])
def test_batched_cams_match_reference(on_device):
    model = TinyCamNet()
    images = [_image(37, 53, 10), _image(40, 30, 11), _image(37, 53, 12), _image(40, 30, 13)]
    labels = [_labels(3), _labels(0, 7, 19), _labels(), _labels(7)]
    results = batched_cams(model, images, labels, resize_on_device=on_device)
    assert len(results) == len(images)
    for image, label, result in zip(images, labels, results):
        reference = multiscale_cam(model, image, label)
        np.testing.assert_array_equal(result.keys, reference.keys)
        assert result.cam.shape == reference.cam.shape and result.high_res.shape == reference.high_res.shape
        np.testing.assert_allclose(result.cam, reference.cam, atol=1e-4)
        np.testing.assert_allclose(result.high_res, reference.high_res, atol=1e-4)


def test_batched_cams_bfloat16_stays_close():
    model = TinyCamNet()
    images, labels = [_image(32, 48, 14), _image(32, 48, 15)], [_labels(2, 9), _labels(9)]
    low = batched_cams(model, images, labels, dtype=torch.bfloat16, channels_last=True)
    for image, label, result in zip(images, labels, low):
        np.testing.assert_allclose(result.high_res, multiscale_cam(model, image, label).high_res, atol=0.05)


def test_cam_argmax_equals_prepended_plane_argmax_with_ties():
    rng = np.random.default_rng(6)
    scores = (rng.integers(0, 10, (3, 12, 15)) / 20).astype(np.float32)  # many exact ties at 0.25
    plane = np.full((1, 12, 15), np.float32(0.25), dtype=np.float32)
    np.testing.assert_array_equal(cam_argmax(scores, 0.25), np.argmax(np.concatenate([plane, scores]), axis=0))


def test_cam_to_label_ties_and_key_mapping():
    # pixels:          fg1 wins   fg2 wins   tie with bg   tie fg1/fg2   all below
    scores = np.array([[0.5, 0.1, 0.3, 0.4, 0.2],
                       [0.2, 0.6, 0.1, 0.4, 0.2]], dtype=np.float32)[:, None, :]
    label = cam_to_label(scores, np.array([4, 11]), bg_threshold=0.3)
    assert label.dtype == np.uint8
    assert label[0].tolist() == [5, 12, 0, 5, 0]


def test_cam_to_label_without_classes_is_background():
    label = cam_to_label(np.zeros((0, 4, 6), dtype=np.float32), np.zeros(0, dtype=np.int64), 0.1)
    assert label.shape == (4, 6) and not label.any()


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(7)
    result = CamResult(np.array([3, 14]), rng.random((2, 3, 4), dtype=np.float32),
                       rng.random((2, 10, 13), dtype=np.float32))
    path = tmp_path / "cams" / "2007_000032.npz"
    assert not cam_is_complete(path)
    save_cam(path, result)
    assert cam_is_complete(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["2007_000032.npz"]  # no temporary left behind
    with np.load(path, allow_pickle=False) as raw:
        assert raw["cam"].dtype == np.float16 and raw["keys"].dtype == np.int64
    loaded = load_cam(path)
    assert loaded.cam.dtype == np.float32 and loaded.high_res.dtype == np.float32
    np.testing.assert_array_equal(loaded.keys, [3, 14])
    np.testing.assert_allclose(loaded.cam, result.cam, atol=1e-3)
    np.testing.assert_allclose(loaded.high_res, result.high_res, atol=1e-3)


def test_corrupt_cam_files_raise_data_error_naming_the_file(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(DataError, match="garbage.npz"):
        load_cam(garbage)
    assert not cam_is_complete(garbage)

    good = tmp_path / "good.npz"
    save_cam(good, CamResult(np.array([1]), np.ones((1, 2, 2), np.float32), np.ones((1, 5, 5), np.float32)))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(DataError, match="truncated.npz"):
        load_cam(truncated)
    assert not cam_is_complete(truncated)

    partial = tmp_path / "partial.npz"
    np.savez(partial, keys=np.array([1]), cam=np.ones((1, 2, 2), np.float32))
    with pytest.raises(DataError, match="partial.npz.*high_res"):
        load_cam(partial)
    assert not cam_is_complete(partial)

    with pytest.raises(DataError, match="missing.npz"):
        load_cam(tmp_path / "missing.npz")
