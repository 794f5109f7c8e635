"""VOC 2012 (+ SBD) data: file reading and validation (`voc`), augmentation (`transforms`), torch datasets
(`datasets`, imported on demand since it needs torch) and the synthetic VOC-format benchmark (`synth`)."""
from vwe.data.voc import (
    CLASSES,
    IGNORE,
    NUM_CLASSES,
    CheckReport,
    VOCDataset,
    image_labels_from_mask,
    labels_from_annotation,
    palette,
    read_image,
    read_mask,
    write_mask,
)

__all__ = [
    "CLASSES", "IGNORE", "NUM_CLASSES", "CheckReport", "VOCDataset", "image_labels_from_mask",
    "labels_from_annotation", "palette", "read_image", "read_mask", "write_mask",
]
