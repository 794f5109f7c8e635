"""The classifier learns image labels: resnet-tiny from scratch on the synthetic benchmark, CPU, ~15 s."""
from __future__ import annotations

from pathlib import Path

import torch

from vwe.config import ModelConfig
from vwe.data.datasets import ClassificationDataset
from vwe.data.synth import generate
from vwe.losses import classifier_loss
from vwe.models import build_classifier

CLASSES = 4  # one class group: only the small class-specific part tells them apart
SIZE = 96
STEPS, BATCH, LR = 500, 16, 2e-3


def load_split(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = ClassificationDataset(root, split, crop_size=SIZE, resize_long=(SIZE, SIZE), flip=False)
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([i["image"] for i in items]), torch.stack([i["labels"] for i in items])[:, :CLASSES]


def micro_f1(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    return (2 * (predicted * labels).sum() / (predicted.sum() + labels.sum())).item()


def test_image_label_f1_rises_well_above_chance(tmp_path: Path, one_thread: None) -> None:
    generate(tmp_path, {"train_aug": 400, "val": 200}, SIZE, SIZE, num_classes=CLASSES, seed=0)
    train_x, train_y = load_split(tmp_path, "train_aug")
    val_x, val_y = load_split(tmp_path, "val")

    torch.manual_seed(0)
    # from scratch the stages a pretrained backbone keeps fixed (layer1, layer2) must learn too
    cfg = ModelConfig(variant="vwe+hspp", backbone="resnet-tiny", num_words=32, detach_layer2=False)
    model = build_classifier(cfg, num_classes=CLASSES).train()
    backbone, new = model.param_groups()
    optimizer = torch.optim.AdamW([{"params": backbone}, {"params": new}], lr=LR, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=STEPS, power=0.9)
    for _ in range(STEPS):
        index = torch.randint(len(train_x), (BATCH,))
        images = train_x[index]
        if torch.rand(()) < 0.5:
            images = images.flip(3)
        loss, _ = classifier_loss(model(images), train_y[index], cfg, model.codebook_for_loss())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()

    with torch.no_grad():
        predicted = (model.eval()(val_x).img_logits > 0).float()
    f1 = micro_f1(predicted, val_y)
    chance = micro_f1(torch.ones_like(val_y), val_y)  # every class for every image: the best constant guess here
    print(f"held-out image-label F1 {f1:.3f} vs chance {chance:.3f}")
    assert f1 > chance + 0.15
