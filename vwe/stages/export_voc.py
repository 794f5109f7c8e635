"""Predictions of a split (VOC 2012 test) packed for the PASCAL VOC evaluation server.

The server takes a tar.gz holding `results/VOC2012/Segmentation/comp6_test_cls/<id>.png`, one palette PNG of class
indices per test image (comp6: trained with data beyond VOC, here ImageNet/COCO initialisation). Every id of the
split must be there; each PNG is checked before it is packed.
"""
from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vwe import storage
from vwe.data.voc import VOCDataset
from vwe.errors import DataError
from vwe.io import atomic_path

SERVER_DIR = "results/VOC2012/Segmentation/comp6_test_cls"


def export_voc(root: str | Path, split: str, pred_dir: str | Path, archive: str | Path,
               num_classes: int = 20) -> dict[str, Any]:
    """Writes `archive` (tar.gz) with the prediction of every id of `split`; returns {"archive", "images"}.

    A missing prediction, a PNG that is not a palette index map of the image's size, or a label outside
    0..num_classes is a DataError naming the file.
    """
    voc = VOCDataset(root)
    ids = voc.split_ids(split)
    missing = storage.missing(pred_dir, [f"{i}.png" for i in ids])
    if missing:
        raise DataError(f"{pred_dir}: {len(missing)} of {len(ids)} predictions of split {split!r} missing, e.g. "
                        f"{missing[0]} (run `vwe infer-seg --split {split}` first)")
    with atomic_path(archive) as tmp, tarfile.open(tmp, "w:gz") as tar:
        for image_id in ids:
            path = storage.join(pred_dir, f"{image_id}.png")
            data = storage.read_bytes(path)
            _check_prediction(path, data, voc, image_id, num_classes)
            info = tarfile.TarInfo(f"{SERVER_DIR}/{image_id}.png")
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return {"archive": str(archive), "images": len(ids)}


def _check_prediction(path: str | Path, data: bytes, voc: VOCDataset, image_id: str, num_classes: int) -> None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode, size, labels = image.mode, image.size, np.array(image)
    except Exception as err:  # PIL reports damaged files with many exception types
        raise DataError(f"{path}: cannot decode the PNG ({type(err).__name__}: {err})") from err
    if mode != "P":
        raise DataError(f"{path}: mode {mode}; the server expects a palette (P) PNG of class indices")
    with storage.open_input(voc.image_path(image_id)) as f, Image.open(f) as original:
        if original.size != size:
            raise DataError(f"{path}: size {size[0]}x{size[1]} differs from its image "
                            f"{original.size[0]}x{original.size[1]}")
    if labels.max(initial=0) > num_classes:
        raise DataError(f"{path}: label {int(labels.max())} outside 0..{num_classes}")
