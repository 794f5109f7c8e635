"""The branches a GPU run takes, run on the CPU: bf16 autocast, channels_last, folded frozen BN, torch.compile, the
batched augmentation and the image resizing on the device. Each agrees with the plain fp32 path."""
from pathlib import Path

import numpy as np
import pytest
import torch

from vwe.accelerator import Accelerator
from vwe.cam import batched_cams, multiscale_cam
from vwe.checkpoint import LocalSession
from vwe.config import load_config
from vwe.data.datasets import ClassificationDataset
from vwe.data.device_augment import augment_batch, collate, device_item
from vwe.data.transforms import TrainTransform
from vwe.data.voc import read_image
from vwe.models import build_classifier
from vwe.models.deeplab import MultiScaleDeepLab, build_deeplab
from vwe.models.resnet import fold_frozen_bn
from vwe.stages import train_cam, train_seg

pytestmark = pytest.mark.usefixtures("one_thread")

VOC_SAMPLES = Path(__file__).parent / "data" / "voc-samples" / "VOC2012" / "JPEGImages"


def tiny(synth_root: Path, out: Path, *overrides: str):
    return load_config("tiny", [f"data.root={synth_root}", f"out_dir={out}", *overrides])


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    images = [read_image(path) for path in sorted(VOC_SAMPLES.glob("*.jpg"))]
    # a tall image that PIL shrinks height first (Pillow 13), and one smaller than some crops
    return images + [rng.integers(0, 256, (900, 120, 3), dtype=np.uint8), rng.integers(0, 256, (40, 50, 3), np.uint8)]


@pytest.mark.parametrize("crop, resize_long", [(512, (320, 640)), (64, (30, 90)), (96, (60, 200))])
def test_the_device_augmentation_gives_the_host_pixels(crop, resize_long):
    images = _images()
    transform = TrainTransform(crop_size=crop, resize_long=resize_long)
    for seed in range(3):
        host = [transform(image, np.random.default_rng((seed, i))) for i, image in enumerate(images)]
        items = [device_item(image, transform.draw(image.shape, np.random.default_rng((seed, i))), crop)
                 for i, image in enumerate(images)]
        batch = collate([{"id": str(i), **item} for i, item in enumerate(items)])
        assert batch["height_first"].any() and not batch["height_first"].all()  # both pass orders in one batch
        out = augment_batch(batch, "cpu")
        assert out.shape == (len(images), 3, crop, crop) and out.dtype == torch.float32
        for i, expected in enumerate(host):
            np.testing.assert_array_equal(out[i].numpy(), expected)


def test_the_device_dataset_batches_equal_the_host_ones(synth_root):
    host = ClassificationDataset(synth_root, "train_aug", crop_size=48, resize_long=(40, 90), seed=3)
    device = ClassificationDataset(synth_root, "train_aug", crop_size=48, resize_long=(40, 90), seed=3,
                                   augment="device")
    host.set_epoch(2)
    device.set_epoch(2)
    loader = torch.utils.data.DataLoader(device, batch_size=6, collate_fn=device.collate_fn)
    batch = next(iter(loader))
    expected = torch.stack([host[i]["image"] for i in range(6)])
    torch.testing.assert_close(augment_batch(batch, "cpu"), expected, rtol=0, atol=0)
    assert batch["id"] == [host[i]["id"] for i in range(6)]
    torch.testing.assert_close(batch["labels"], torch.stack([host[i]["labels"] for i in range(6)]))


def test_folded_bn_computes_the_same_function_and_gradients():
    torch.manual_seed(0)
    cfg = load_config("tiny", ["model.detach_layer2=false"])
    plain = build_classifier(cfg)
    for module in plain.modules():  # BN statistics and affine values away from the identity
        if hasattr(module, "running_var"):
            torch.nn.init.uniform_(module.running_var, 0.5, 2.0)
            torch.nn.init.normal_(module.running_mean, 0, 0.2)
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
    folded = fold_frozen_bn(build_classifier(cfg))
    folded.load_state_dict(plain.state_dict())
    assert list(folded.state_dict()) == list(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    outputs = [model(x).img_logits for model in (plain, folded)]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)
    for output in outputs:
        output.square().sum().backward()
    named = dict(folded.named_parameters())
    checked = 0
    for name, parameter in plain.named_parameters():
        if parameter.grad is not None and "backbone" in name:
            torch.testing.assert_close(named[name].grad, parameter.grad, rtol=1e-3, atol=1e-5)
            checked += 1
    assert checked > 20  # conv weights and BN affine parameters of every block


def test_channels_last_gives_the_same_outputs():
    torch.manual_seed(0)
    model = build_classifier(load_config("tiny")).eval()
    x = torch.randn(2, 3, 64, 64)
    expected = model(x).img_logits
    accel = Accelerator.of(load_config("tiny", ["train.channels_last=true"]).train, "cpu")
    fast = accel.prepare(model)
    inputs = accel.inputs(x)
    assert inputs.is_contiguous(memory_format=torch.channels_last)
    assert fast.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast(inputs).img_logits, expected, rtol=1e-4, atol=1e-5)


def test_bf16_cams_agree_with_the_fp32_reference():
    torch.manual_seed(0)
    model = build_classifier(load_config("tiny")).eval()
    with torch.no_grad():
        # a head that adds evidence, as a trained one's does for its class; a random head's CAM is a sum of large
        # terms of both signs that cancel, where bf16's rounding of the features shows at 2e-2
        model.classifier.weight.abs_()
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    labels = [np.eye(20, dtype=np.float32)[[i, 7]].sum(0) for i in range(3)]
    accel = Accelerator.of(load_config("tiny", ["cam.amp=true", "cam.channels_last=true"]).cam, "cpu")
    fast = batched_cams(accel.prepare(model), images, labels, (1.0, 0.5), dtype=accel.dtype,
                        channels_last=accel.channels_last, resize_on_device=accel.on_device("device"))
    for image, label, result in zip(images, labels, fast):
        reference = multiscale_cam(model.float().to(memory_format=torch.contiguous_format), image, label, (1.0, 0.5))
        assert np.abs(result.high_res - reference.high_res).max() < 1e-2
        assert np.abs(result.cam - reference.cam).max() < 1e-2


def _losses(result) -> list[float]:
    return [report["loss"] for report in result["history"]]


def test_the_fast_classifier_step_trains_like_the_plain_one(synth_root, tmp_path):
    """Augmentation on the device, channels_last and folded BN change the arithmetic only in rounding; bf16 by a
    little more; every variant still learns."""
    common = ["train.max_steps=8", "train.log_every=2", "train.batch_size=8", "train.optimizer=adamw",
              "train.lr=0.002"]
    runs = {}
    for name, overrides in {"plain": [],
                            "fast": ["train.augment=device", "train.channels_last=true", "train.fuse_bn=true"],
                            "bf16": ["train.augment=device", "train.amp=true"]}.items():
        cfg = tiny(synth_root, tmp_path / name, *common, *overrides)
        runs[name] = _losses(train_cam.train(cfg, LocalSession(tmp_path / name / "ckpt")))
    assert len(runs["plain"]) == 4
    np.testing.assert_allclose(runs["fast"], runs["plain"], rtol=1e-3)
    np.testing.assert_allclose(runs["bf16"], runs["plain"], rtol=5e-2)
    for losses in runs.values():
        assert losses[-1] < losses[0]


def test_the_compiled_classifier_step_equals_the_eager_one(synth_root, tmp_path):
    common = ["train.max_steps=3", "train.log_every=1", "train.optimizer=adamw", "train.lr=0.002"]
    eager = train_cam.train(tiny(synth_root, tmp_path / "eager", *common), LocalSession(tmp_path / "e"))
    compiled = train_cam.train(tiny(synth_root, tmp_path / "compiled", *common, "train.compile=true"),
                               LocalSession(tmp_path / "c"))
    np.testing.assert_allclose(_losses(compiled), _losses(eager), rtol=1e-4)


def test_the_bf16_deeplab_step_stays_close_and_learns():
    cfg = load_config("tiny", ["seg.channels_last=true", "seg.fuse_bn=true"])
    batch = {"image": torch.randn(4, 3, 64, 64), "label": torch.randint(0, 3, (4, 64, 64))}
    losses = {}
    for amp in (False, True):
        torch.manual_seed(0)
        step_cfg = cfg.with_overrides({"seg.amp": amp, "seg.lr": 1e-3})
        base = build_deeplab(step_cfg.seg, 21)
        model = Accelerator.of(step_cfg.seg, "cpu").prepare(MultiScaleDeepLab(base, step_cfg.seg.train_msc_scales))
        optimizer = train_seg.build_optimizer(base, step_cfg.seg)
        losses[amp] = [float(train_seg.train_step(model, batch, optimizer, step_cfg)["loss"]) for _ in range(6)]
    np.testing.assert_allclose(losses[True], losses[False], rtol=5e-2)
    assert losses[True][-1] < losses[True][0]


def test_auto_settings_follow_the_device():
    cpu, gpu = Accelerator(torch.device("cpu")), Accelerator(torch.device("cuda"))
    assert not cpu.on_device("auto") and gpu.on_device("auto")
    assert cpu.on_device("device") and not gpu.on_device("host")
    assert Accelerator.of(load_config("voc-fast").train, "cpu") == Accelerator(
        torch.device("cpu"), amp=True, channels_last=True, compile=True, fuse_bn=True)
