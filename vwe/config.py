"""One typed configuration for the whole pipeline.

Every stage reads the same `Config`. It is loaded from YAML (`configs/voc.yaml` reproduces the paper) and
overridden from the command line with dotted keys (`--set train.batch_size=8`). An unknown key or a value of
the wrong type is an error that names the key. Defaults are the paper's (METHOD.md §1-§4).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vwe.errors import ConfigError
from vwe.io import write_text
from vwe.storage import is_uri


@dataclass
class DataConfig:
    root: str = "data/VOCdevkit/VOC2012"  # the devkit's VOC2012 folder; "{out_dir}" expands to out_dir
    sbd_root: str = ""  # optional SBD `dataset/` folder with train.txt / val.txt (for train_aug without Aug masks)
    train_split: str = "train_aug"  # classifier and DeepLab training list, METHOD §1.6
    cam_split: str = "train"  # split whose CAMs are evaluated (paper's CAM table uses VOC train)
    eval_split: str = "val"  # split for the final segmentation mIoU
    num_classes: int = 20  # foreground classes; label 0 is background, 255 ignore
    skip_bad: bool = False  # record unreadable or inconsistent files in a report and go on, instead of failing


@dataclass
class SynthConfig:
    enabled: bool = False  # generate the synthetic VOC-format benchmark into data.root before the pipeline
    seed: int = 0
    num_classes: int = 20  # classes drawn from VOC's names, in VOC order
    height: int = 375  # image size; VOC's typical 375 x 500
    width: int = 500
    splits: dict[str, int] = field(default_factory=lambda: {"train_aug": 2000, "train": 400, "val": 400, "test": 100})


@dataclass
class ModelConfig:
    variant: str = "vwe+hspp"  # baseline | vwe | hspp | vwe+hspp (v1) | vwl-l | vwl-m, METHOD §1.7
    backbone: str = "resnet50"  # resnet50 | resnet101 | resnet-tiny (small widths, for tests and the demo)
    pretrained: str = ""  # torchvision-format ImageNet checkpoint: a path or a URL; "" = random init
    num_words: int = 256  # codebook size k
    hspp_gamma: float = 2.0  # weight of the GAP term in HSPP, METHOD §1.4
    hspp_levels: list[int] = field(default_factory=lambda: [1, 2, 4])
    detach_layer2: bool | None = None  # None: by variant (on for v1 and VWL-L, off for VWL-M), METHOD §1.1
    img_loss_weight: float = 1.0
    w2i_loss_weight: float = 1.0  # word-to-image loss
    word_loss_weight: float = 1.0
    decov_loss_weight: float = 1.0  # VWL-L only
    memory_momentum: float = 1e-3  # VWL-M codebook EMA rate rho, METHOD §1.7


@dataclass
class TrainConfig:
    batch_size: int = 16  # global batch, split across data-parallel workers (METHOD P13)
    epochs: int = 6
    lr: float = 0.01  # backbone; new layers get lr * new_layer_lr_mult
    new_layer_lr_mult: float = 10.0
    optimizer: str = "sgd"  # sgd (the paper) | adamw (for random-init backbones, e.g. the synthetic demo)
    momentum: float = 0.9  # SGD; the authors' code ran with an effective 1e-4 (METHOD P1); set 1e-4 to match them
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    crop_size: int = 512
    resize_long: list[int] = field(default_factory=lambda: [320, 640])  # long side drawn uniformly from this range
    flip: bool = True
    loader_workers: int = 4  # DataLoader processes per training worker
    seed: int = 1
    amp: bool = True  # bf16 autocast on GPU (ignored on CPU)
    channels_last: bool = True  # GPU only
    compile: bool = False  # torch.compile the model (GPU)
    log_every: int = 20  # steps between progress lines / host syncs
    checkpoint_every: int = 200  # steps between checkpoints (plus one at each epoch end)
    max_steps: int = 0  # > 0 stops early (tests, smoke runs); the LR schedule still spans the full run
    eval_images: int = 0  # > 0: CAM mIoU (best threshold of cam.sweep) of the first N images of data.cam_split at
    #                       each epoch end, reported as cam_miou (what `vwe tune`'s ASHA scheduler compares)


@dataclass
class CamConfig:
    scales: list[float] = field(default_factory=lambda: [1.0, 0.5, 1.5, 2.0])  # the first must be 1.0, METHOD §2
    bg_threshold: float = 0.14  # background score for CAM -> label (v1 0.14, VWL 0.13), METHOD D2
    sweep: list[float] = field(default_factory=lambda: [round(0.05 + 0.01 * i, 2) for i in range(46)])  # 0.05..0.50
    batch_size: int = 8  # images per inference batch (per actor)
    dtype: str = "float16"  # storage dtype of saved CAMs
    num_actors: int = 0  # inference actors; 0 = one per GPU (ray.use_gpu) or one on CPU
    amp: bool = True  # bf16 autocast on GPU (ignored on CPU)


@dataclass
class PseudoLabelConfig:
    method: str = "confident"  # confident: fg/bg thresholds (+ CRF), 255 where they disagree (IRNet, METHOD §3)
    #                            threshold: CAM argmax at cam.bg_threshold (+ CRF on those labels when crf)
    fg_threshold: float = 0.30  # confident foreground background-plane score, METHOD §3
    bg_threshold: float = 0.05  # confident background
    crf: bool = True
    crf_iterations: int = 10
    crf_gt_prob: float = 0.7
    crf_gaussian_sxy: float = 3.0
    crf_gaussian_compat: float = 3.0
    crf_bilateral_sxy: float = 50.0
    crf_bilateral_srgb: float = 5.0
    crf_bilateral_compat: float = 10.0


@dataclass
class SegConfig:
    backbone: str = "resnet101"  # resnet101 | resnet50 | resnet-tiny (tests, demo); output stride 8, METHOD §5
    init: str = "imagenet"  # imagenet: torchvision ResNet checkpoint, torchvision layout, ImageNet mean/std input |
    #                         coco: DeepLab's COCO checkpoint (deeplabv1_resnet101-coco.pth, caffe names), caffe
    #                         layout (stride on the 1x1), BGR input minus the caffe mean, METHOD §5 |
    #                         classifier: the backbone of a `vwe train-cam` export (not the paper: the synthetic
    #                         demo's stand-in for ImageNet weights, learnt from the same image labels)
    pretrained: str = ""  # the `init` checkpoint: a path (or a URL for imagenet); "{out_dir}" expands to out_dir;
    #                       "" = random init (tests only)
    labels_dir: str = ""  # training labels, <id>.png index maps (255 ignored); "" = <out_dir>/pseudo_labels;
    #                       "{out_dir}" expands to out_dir
    batch_size: int = 10  # global, split over the workers; the authors' 5 x grad-accumulation 2 (METHOD P13)
    iterations: int = 20000  # optimiser steps; the poly schedule spans them
    lr: float = 2.5e-4  # backbone conv weights; ASPP weights x aspp_weight_lr_mult, biases x aspp_bias_lr_mult
    optimizer: str = "sgd"  # sgd (the paper) | adamw (small or random-init networks, e.g. the synthetic demo)
    aspp_weight_lr_mult: float = 10.0
    aspp_bias_lr_mult: float = 20.0  # ASPP biases also get no weight decay
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9  # lr_t = lr (1 - t/T)^0.9, set every step (the authors every 10)
    crop_size: int = 321  # square training crop; smaller images are padded bottom/right (image 0, label 255)
    scales: list[float] = field(default_factory=lambda: [0.5, 0.75, 1.0, 1.25, 1.5])  # one drawn per image, P12
    flip: bool = True  # horizontal flip, p = 0.5
    train_msc_scales: list[float] = field(default_factory=lambda: [0.5, 0.75])  # extra input scales of the MSC loss
    aspp_rates: list[int] = field(default_factory=lambda: [6, 12, 18, 24])  # dilations of the 4 summed ASPP branches
    test_scales: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.75])  # first must be 1.0; max fusion, no flip
    crf: bool = False  # infer-seg / eval-seg / export-voc default: dense CRF on the softmax (the paper's +CRF rows)
    crf_iterations: int = 10  # deeplab-pytorch's VOC test CRF, METHOD §4
    crf_gaussian_sxy: float = 1.0
    crf_gaussian_compat: float = 3.0
    crf_bilateral_sxy: float = 67.0
    crf_bilateral_srgb: float = 3.0
    crf_bilateral_compat: float = 4.0
    test_split: str = "test"  # split packed by export-voc for the VOC evaluation server
    num_actors: int = 0  # inference actors; 0 = one per GPU (ray.use_gpu) or one on CPU
    infer_batch_size: int = 4  # images per inference call; each runs alone at full size (batch 1, METHOD §5)
    amp: bool = True  # bf16 autocast on GPU (ignored on CPU), training and inference
    channels_last: bool = True  # GPU only
    compile: bool = False  # torch.compile the training model (GPU)
    loader_workers: int = 4  # DataLoader processes per training worker
    seed: int = 1
    log_every: int = 20  # steps between progress lines / host syncs
    checkpoint_every: int = 1000  # steps between checkpoints (plus one at each epoch end and at the last step)
    max_steps: int = 0  # > 0 stops early (tests, smoke runs); the LR schedule still spans `iterations`


@dataclass
class RayConfig:
    address: str = ""  # "" = a local Ray started in-process (or RAY_ADDRESS when set)
    num_workers: int = 1  # data-parallel training workers
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    storage_path: str = ""  # checkpoints and Ray results, a path every node sees (NFS) or a URI (s3://...);
    #                         "" = <out_dir>/ray
    max_failures: int = 1  # worker failures tolerated per training run
    placement_strategy: str = "PACK"  # training workers: PACK (fill a node first) | SPREAD | STRICT_SPREAD (one
    #                                   per node) | STRICT_PACK, Ray's placement group strategies
    crf_resource: str = ""  # custom resource of the CPU nodes (cluster.yaml: crf_node); set, the CRF tasks of
    #                         make-pseudo run only on nodes that have it; "" = any node with a free CPU


@dataclass
class Config:
    out_dir: str = "runs/default"  # every stage writes below this folder
    data: DataConfig = field(default_factory=DataConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cam: CamConfig = field(default_factory=CamConfig)
    pseudo: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    seg: SegConfig = field(default_factory=SegConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "Config":
        return _build(cls, data, prefix="", source=source)

    def with_overrides(self, overrides: list[str] | dict[str, Any]) -> "Config":
        return apply_overrides(self, overrides)

    def resolved(self) -> "Config":
        """A copy with `{out_dir}` expanded in data.root and local paths made absolute.

        Ray workers run in other directories (and on other hosts), so stages hand them resolved configs.
        """
        out_dir = self.out_dir if is_uri(self.out_dir) else str(Path(self.out_dir).resolve())
        root = self.data.root.replace("{out_dir}", out_dir)
        root = root if is_uri(root) else str(Path(root).resolve())
        overrides: dict[str, Any] = {"out_dir": out_dir, "data.root": root}
        if self.ray.storage_path and "://" not in self.ray.storage_path:
            overrides["ray.storage_path"] = str(Path(self.ray.storage_path).resolve())
        for key, value in (("seg.labels_dir", self.seg.labels_dir), ("seg.pretrained", self.seg.pretrained)):
            value = value.replace("{out_dir}", out_dir)
            if value:
                overrides[key] = value if "://" in value else str(Path(value).resolve())
        return self.with_overrides(overrides)

    def dump(self, path: str | Path) -> None:
        """Writes the config as YAML (atomically; `path` may be a URI)."""
        write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Reads a YAML config (missing keys take the defaults) and applies `key=value` overrides."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise ConfigError(f"{path}: cannot read config file ({err.strerror})") from err
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    cfg = Config.from_dict(data, source=source)
    return apply_overrides(cfg, overrides or [])


def apply_overrides(cfg: Config, overrides: list[str] | dict[str, Any]) -> Config:
    """Returns a copy of `cfg` with dotted overrides applied: ["train.batch_size=8"] or {"train.batch_size": 8}.

    String values are parsed as YAML scalars/lists (`8`, `0.5`, `true`, `[1, 2]`), then type-checked.
    """
    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        items = []
        for text in overrides:
            key, sep, value = text.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"override {text!r}: expected key=value, e.g. train.batch_size=8")
            items.append((key.strip(), _parse_scalar(value)))
    data = cfg.to_dict()
    for key, value in items:
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"override {key!r}: unknown key {'.'.join(parts[: i + 1])!r}")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"override {key!r}: unknown key {key!r}")
        node[parts[-1]] = value
    return Config.from_dict(data, source="overrides")


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def _build(cls: type, data: Any, prefix: str, source: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'top level'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown key {prefix + unknown[0]!r} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        key = prefix + name
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            kwargs[name] = _build(kind, value, key + ".", source)
        else:
            kwargs[name] = _check(kind, value, key, source)
    return cls(**kwargs)


def _check(kind: Any, value: Any, key: str, source: str) -> Any:
    """Returns `value` converted to `kind` where that is lossless (int -> float, list -> list), else raises."""
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _check(option, value, key, source)
            except ConfigError:
                pass
        raise _type_error(kind, value, key, source)
    if kind is type(None):
        if value is None:
            return None
        raise _type_error(kind, value, key, source)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _type_error(kind, value, key, source)
        return [_check(args[0], v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(kind, value, key, source)
        return {_check(args[0], k, key, source): _check(args[1], v, f"{key}.{k}", source) for k, v in value.items()}
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (int, float) and isinstance(value, bool):
        raise _type_error(kind, value, key, source)
    if isinstance(value, kind):
        return value
    raise _type_error(kind, value, key, source)


def _type_error(kind: Any, value: Any, key: str, source: str) -> ConfigError:
    name = getattr(kind, "__name__", None) or str(kind).replace("typing.", "")
    return ConfigError(f"{source}: key {key!r} expects {name}, got {value!r} ({type(value).__name__})")
