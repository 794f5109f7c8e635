"""One typed configuration for the whole pipeline, checked once when it is loaded.

Every stage reads the same `Config`. It is loaded from YAML (a path, or the name of a config packaged in
`vwe/configs/`: `voc` reproduces the paper, `synthetic` is the demo, `tiny` the smoke test) and overridden from the
command line with dotted keys (`--set train.batch_size=8`). Each field's type says what it accepts: `Literal[...]`
for a choice, `Annotated[..., Range(...)]` for a range; cross-field rules live in `_check_rules`. An unknown key, a
value of the wrong type or out of range is a ConfigError that names the key, raised before any work starts.
Defaults are the paper's (METHOD.md §1-§5).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from vwe.errors import ConfigError
from vwe.io import write_text
from vwe.storage import is_uri


@dataclass(frozen=True)
class Range:
    """Bounds of a number, or of every item of a list; `low_open` / `high_open` exclude the bound itself."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def check(self, value: float) -> str | None:
        """None if `value` is inside, else what it should be."""
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return self.text()
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return self.text()
        return None

    def text(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {_number(self.high)}"
        return (f"in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}"
                f"{')' if self.high_open else ']'}")


def _number(value: float | None) -> str:
    return f"{value:g}"


Positive = Annotated[int, Range(1)]
NonNegative = Annotated[int, Range(0)]
PositiveFloat = Annotated[float, Range(0, low_open=True)]
NonNegativeFloat = Annotated[float, Range(0)]
Fraction = Annotated[float, Range(0, 1)]  # a score or probability in [0, 1]
Scales = Annotated[list[float], Range(0, low_open=True)]  # image scales; the rules ask some to start with 1.0
Backbone = Literal["resnet50", "resnet101", "resnet-tiny"]  # resnet-tiny: small widths, for tests and the demo
Optimizer = Literal["sgd", "adamw"]  # sgd: the paper; adamw: random-init backbones (the synthetic demo)


@dataclass
class CrfConfig:
    """A dense CRF (pydensecrf's DenseCRF2D, METHOD §4): Potts Gaussian and bilateral kernels, mean-field steps."""

    enabled: bool = True
    # pydensecrf (C++, one CPU core per image) | torch (`vwe.dense_crf`: the same CRF in PyTorch, batched on a GPU) |
    # auto: torch where the stage runs on GPU actors (ray.use_gpu), pydensecrf on CPU tasks
    backend: Literal["auto", "pydensecrf", "torch"] = "auto"
    iterations: Positive = 10
    gt_prob: Annotated[float, Range(0, 1, low_open=True, high_open=True)] = 0.7  # label unary only (pseudo labels)
    gaussian_sxy: PositiveFloat = 3.0
    gaussian_compat: NonNegativeFloat = 3.0
    bilateral_sxy: PositiveFloat = 50.0
    bilateral_srgb: PositiveFloat = 5.0
    bilateral_compat: NonNegativeFloat = 10.0


@dataclass
class DataConfig:
    # voc: PASCAL VOC 2012 (+ SBD), 20 classes | coco: COCO-2014, 80 classes, converted by `vwe data prepare-coco`
    #      from data.coco_root into data.root (the same folder layout, with splits train and val)
    dataset: Literal["voc", "coco"] = "voc"
    root: str = "data/VOCdevkit/VOC2012"  # the devkit's VOC2012 folder; "{out_dir}" expands to out_dir
    sbd_root: str = ""  # optional SBD `dataset/` folder with train.txt / val.txt (for train_aug without Aug masks)
    train_split: str = "train_aug"  # classifier and DeepLab training list, METHOD §1.6
    cam_split: str = "train"  # split whose CAMs are evaluated (paper's CAM table uses VOC train)
    eval_split: str = "val"  # split for the final segmentation mIoU
    num_classes: Annotated[int, Range(1, 80)] = 20  # foreground classes (VOC 20, COCO 80); 0 background, 255 ignore
    # image-level labels from the annotation XMLs (the authors' cls_labels, METHOD §6) or from the masks; either
    # falls back to the other for an image without one; `vwe data check` counts the images where they disagree
    labels_from: Literal["xml", "masks"] = "xml"
    skip_bad: bool = False  # record unreadable or inconsistent files in a report and go on, instead of failing
    # COCO's own layout (train2014/, val2014/, annotations/instances_*.json) that prepare-coco reads; with
    # synth.enabled and dataset coco the synthetic benchmark is written here in COCO's format first;
    # "{out_dir}" expands to out_dir
    coco_root: str = "data/coco"


@dataclass
class SynthConfig:
    enabled: bool = False  # generate the synthetic VOC-format benchmark into data.root before the pipeline
    seed: NonNegative = 0
    num_classes: Annotated[int, Range(1, 20)] = 20  # classes drawn from VOC's names, in VOC order
    height: Annotated[int, Range(16)] = 375  # image size; VOC's typical 375 x 500
    width: Annotated[int, Range(16)] = 500
    splits: dict[str, NonNegative] = field(
        default_factory=lambda: {"train_aug": 2000, "train": 400, "val": 400, "test": 100})
    # the two failure modes VWE targets, as knobs: the radius of each object's class-unique part relative to the
    # benchmark's (1: about a tenth of the object), and P(a context class's background is drawn) (the context bias)
    part_scale: PositiveFloat = 1.0
    context_bias: Fraction = 0.85


@dataclass
class ModelConfig:
    # METHOD §1.7: the v1 ablation rows (baseline | vwe | hspp | vwe+hspp) and the journal's codebooks
    variant: Literal["baseline", "vwe", "hspp", "vwe+hspp", "vwl-l", "vwl-m"] = "vwe+hspp"
    backbone: Backbone = "resnet50"
    pretrained: str = ""  # torchvision-format ImageNet checkpoint: a path or a URL; "" = random init
    num_words: Positive = 256  # codebook size k
    hspp_gamma: NonNegativeFloat = 2.0  # weight of the GAP term in HSPP, METHOD §1.4
    hspp_levels: Annotated[list[int], Range(1)] = field(default_factory=lambda: [1, 2, 4])
    detach_layer2: bool | None = None  # None: by variant (on for v1 and VWL-L, off for VWL-M), METHOD §1.1
    img_loss_weight: NonNegativeFloat = 1.0
    w2i_loss_weight: NonNegativeFloat = 1.0  # word-to-image loss
    word_loss_weight: NonNegativeFloat = 1.0
    decov_loss_weight: NonNegativeFloat = 1.0  # VWL-L only
    memory_momentum: Annotated[float, Range(0, 1, low_open=True)] = 1e-3  # VWL-M codebook EMA rate rho, METHOD §1.7


@dataclass
class TrainConfig:
    batch_size: Positive = 16  # global batch, split across data-parallel workers (METHOD P13)
    epochs: Positive = 6
    lr: PositiveFloat = 0.01  # backbone; new layers get lr * new_layer_lr_mult
    new_layer_lr_mult: PositiveFloat = 10.0
    optimizer: Optimizer = "sgd"
    # SGD momentum: the authors' optimizer handed the weight decay to SGD's momentum slot, so their numbers came
    # from an effective 1e-4 (METHOD P1); 0.9 is what was intended, one override away
    momentum: Annotated[float, Range(0, 1, high_open=True)] = 1e-4
    weight_decay: NonNegativeFloat = 1e-4
    poly_power: NonNegativeFloat = 0.9
    crop_size: Positive = 512
    resize_long: Annotated[list[int], Range(1)] = field(default_factory=lambda: [320, 640])  # long side, uniform
    flip: bool = True
    loader_workers: NonNegative = 4  # DataLoader processes per training worker
    seed: NonNegative = 1
    # the speed settings, on whatever device the run has (the CPU runs them too, which is how the tests cover them)
    amp: bool = False  # bf16 autocast; the authors ran fp32
    channels_last: bool = False  # NHWC model and inputs
    compile: bool = False  # torch.compile the model
    fuse_bn: bool = False  # the frozen BN folded into the conv before it (the same function, one pass less)
    # auto: on the device with ray.use_gpu, else host | host: PIL in the DataLoader workers | device: the workers
    #       only decode, resize/flip/crop/normalise run batched on the device with the same pixels
    augment: Literal["auto", "host", "device"] = "auto"
    log_every: Positive = 20  # steps between progress lines / host syncs
    checkpoint_every: Positive = 200  # steps between checkpoints (plus one at each epoch end)
    max_steps: NonNegative = 0  # > 0 stops early (tests, smoke runs); the LR schedule still spans the full run
    eval_images: NonNegative = 0  # > 0: CAM mIoU (best background score of cam.sweep) of the first N images of
    #                               data.cam_split at each epoch end, reported as cam_miou (what `vwe tune`'s ASHA
    #                               scheduler compares)


@dataclass
class CamConfig:
    scales: Scales = field(default_factory=lambda: [1.0, 0.5, 1.5, 2.0])  # the first must be 1.0, METHOD §2
    background_score: Fraction = 0.14  # the background plane's score for CAM -> label (v1 0.14, VWL 0.13), METHOD D2
    sweep: Annotated[list[float], Range(0, 1)] = field(
        default_factory=lambda: [round(0.05 + 0.01 * i, 2) for i in range(46)])  # background scores 0.05..0.50
    batch_size: Positive = 8  # images per inference batch (per actor)
    dtype: Literal["float16", "float32"] = "float16"  # storage dtype of saved CAMs
    num_actors: NonNegative = 0  # inference actors; 0 = one per GPU (ray.use_gpu) or one on CPU
    amp: bool = False  # bf16 autocast; the authors ran fp32
    channels_last: bool = False  # NHWC model and inputs
    # where the scaled images are made, the same pixels either way: auto: on the device with ray.use_gpu, else
    # host | host: PIL | device: `vwe.data.pil_resize` on the device
    resize: Literal["auto", "host", "device"] = "auto"
    # the classifier weights that make the CAMs: 0 = the final ones; N = those after epoch N (training keeps them in
    # classifier/epoch_N/); VWL-L's CAM inference loads epoch 5 of 6 (METHOD §1.7, P4)
    classifier_epoch: NonNegative = 0


@dataclass
class PseudoLabelConfig:
    # irnet: the confident labels train IRNet's boundary network, whose random walk on the CAMs makes DeepLab's
    #        labels (the paper's pipeline, METHOD §3) |
    # confident: two background scores (+ CRF each), 255 where they disagree (IRNet's cam_to_ir_label); DeepLab
    #        trains on these |
    # threshold: CAM argmax at cam.background_score (+ CRF on those labels when crf.enabled)
    method: Literal["irnet", "confident", "threshold"] = "irnet"
    fg_background_score: Fraction = 0.30  # high background score: what beats it is confident foreground, METHOD §3
    bg_background_score: Fraction = 0.05  # low background score: where nothing beats it is confident background
    crf: CrfConfig = field(default_factory=CrfConfig)  # IRNet's: Gaussian 3/3, bilateral 50/5/10, unary 0.7
    batch_size: Positive = 16  # images per CRF call of an actor of the torch backend
    num_actors: NonNegative = 0  # actors of the torch backend; 0 = one per GPU (ray.use_gpu) or one on CPU


@dataclass
class IrnConfig:
    """IRNet's boundary network and its random walk (METHOD §3, REFINEMENT §2); used when pseudo.method = irnet.

    Only the boundary (edge) branch: the displacement branch serves instance masks, not semantic labels.
    """

    backbone: Backbone = "resnet50"  # frozen, strides 2, 2, 2, 1
    # imagenet: a torchvision ResNet checkpoint (the paper) | classifier: the backbone of this run's `vwe train-cam`
    #           export (the synthetic demo's stand-in: no ImageNet weights fit resnet-tiny)
    init: Literal["imagenet", "classifier"] = "imagenet"
    pretrained: str = ""  # the `init` checkpoint: a path or a URL; "{out_dir}" expands to out_dir; "" = random init
    num_workers: NonNegative = 0  # data-parallel workers; 0 = ray.num_workers
    batch_size: Positive = 32  # global (METHOD P13)
    epochs: Positive = 3
    lr: PositiveFloat = 0.1
    optimizer: Optimizer = "sgd"
    momentum: Annotated[float, Range(0, 1, high_open=True)] = 1e-4  # the authors' effective momentum (METHOD P1)
    weight_decay: NonNegativeFloat = 1e-4
    poly_power: NonNegativeFloat = 0.9
    crop_size: Annotated[int, Range(4)] = 512  # square crop; image padded with 0 (the mean), labels with 255
    scale_range: Scales = field(default_factory=lambda: [0.5, 1.5])  # random rescale, uniform in [low, high]
    flip: bool = True
    train_radius: Annotated[int, Range(2)] = 10  # path length of the affinity pairs in training, stride-4 cells
    radius: Annotated[int, Range(2)] = 5  # path length of the random walk's affinities at inference
    beta: PositiveFloat = 10.0  # transition matrix T = A^beta, column-normalised
    exp_times: Annotated[int, Range(0, 12)] = 8  # the walk takes 2^exp_times steps
    background_score: Fraction = 0.25  # background plane of the walked, max-normalised CAMs (sem_seg_bg_thres)
    num_actors: NonNegative = 0  # make-sem-seg actors; 0 = one per GPU (ray.use_gpu) or one on CPU
    infer_batch_size: Positive = 8  # images per make-sem-seg call (one walk over the batch)
    amp: bool = False  # bf16 autocast of the network; the walk always runs in fp32
    loader_workers: NonNegative = 4  # DataLoader processes per training worker
    seed: NonNegative = 1
    log_every: Positive = 20
    checkpoint_every: Positive = 200  # steps between checkpoints (plus one at each epoch end)
    max_steps: NonNegative = 0  # > 0 stops early (tests, smoke runs); the LR schedule still spans the full run


@dataclass
class SegConfig:
    backbone: Backbone = "resnet101"  # output stride 8, METHOD §5
    # imagenet: torchvision ResNet checkpoint, torchvision layout, ImageNet mean/std input |
    # coco: DeepLab's COCO checkpoint (deeplabv1_resnet101-coco.pth, caffe names), caffe layout (stride on the 1x1),
    #       BGR input minus the caffe mean, METHOD §5 |
    # classifier: the backbone of a `vwe train-cam` export (not the paper: the synthetic demo's stand-in for
    #       ImageNet weights, learnt from the same image labels)
    init: Literal["imagenet", "coco", "classifier"] = "imagenet"
    pretrained: str = ""  # the `init` checkpoint: a path (or a URL for imagenet); "{out_dir}" expands to out_dir;
    #                       "" = random init (tests only)
    labels_dir: str = ""  # training labels, <id>.png index maps (255 ignored); "" = <out_dir>/pseudo_labels;
    #                       "{out_dir}" expands to out_dir
    num_workers: NonNegative = 0  # data-parallel DeepLab workers; 0 = ray.num_workers
    batch_size: Positive = 10  # global, split over the workers and the accumulation steps (METHOD P13)
    # gradient accumulation: each step sums the gradients of this many sub-batches, each averaged over its own
    # valid pixels, as deeplab-pytorch's 5 x 2 does (METHOD §5); 1 = the whole batch in one pass
    accumulation: Positive = 2
    iterations: Positive = 20000  # optimiser steps; the poly schedule spans them
    lr: PositiveFloat = 2.5e-4  # backbone conv weights; ASPP weights x aspp_weight_lr_mult, biases x aspp_bias_lr_mult
    optimizer: Optimizer = "sgd"
    aspp_weight_lr_mult: PositiveFloat = 10.0
    aspp_bias_lr_mult: PositiveFloat = 20.0  # ASPP biases also get no weight decay
    momentum: Annotated[float, Range(0, 1, high_open=True)] = 0.9
    weight_decay: NonNegativeFloat = 5e-4
    poly_power: NonNegativeFloat = 0.9  # lr_t = lr (1 - t/T)^0.9
    lr_every: Positive = 10  # steps between LR updates of the poly schedule (deeplab-pytorch: every 10)
    crop_size: Positive = 321  # square training crop; smaller images are padded bottom/right (image 0, label 255)
    scales: Scales = field(default_factory=lambda: [0.5, 0.75, 1.0, 1.25, 1.5])  # one drawn per image, P12
    flip: bool = True  # horizontal flip, p = 0.5
    train_msc_scales: Scales = field(default_factory=lambda: [0.5, 0.75])  # extra input scales of the MSC loss
    aspp_rates: Annotated[list[int], Range(1)] = field(default_factory=lambda: [6, 12, 18, 24])  # 4 summed branches
    test_scales: Scales = field(default_factory=lambda: [1.0, 0.5, 0.75])  # first must be 1.0; max fusion, no flip
    # infer-seg / eval-seg / export-voc: dense CRF on the softmax (the paper's +CRF rows), off by default;
    # deeplab-pytorch's VOC test CRF: Gaussian 1/3, bilateral 67/3/4, 10 iterations, METHOD §4
    crf: CrfConfig = field(default_factory=lambda: CrfConfig(
        enabled=False, gaussian_sxy=1.0, gaussian_compat=3.0, bilateral_sxy=67.0, bilateral_srgb=3.0,
        bilateral_compat=4.0))
    test_split: str = "test"  # split packed by export-voc for the VOC evaluation server
    num_actors: NonNegative = 0  # inference actors; 0 = one per GPU (ray.use_gpu) or one on CPU
    infer_batch_size: Positive = 4  # images per inference call; each runs alone at full size (batch 1, METHOD §5)
    amp: bool = False  # bf16 autocast, training and inference; the authors ran fp32
    channels_last: bool = False  # NHWC model and inputs, training and inference
    compile: bool = False  # torch.compile the training model
    fuse_bn: bool = False  # the frozen BN folded into the conv before it, training and inference
    loader_workers: NonNegative = 4  # DataLoader processes per training worker
    seed: NonNegative = 1
    log_every: Positive = 20  # steps between progress lines / host syncs
    checkpoint_every: Positive = 1000  # steps between checkpoints (plus one at each epoch end and at the last step)
    max_steps: NonNegative = 0  # > 0 stops early (tests, smoke runs); the LR schedule still spans `iterations`


@dataclass
class RayConfig:
    address: str = ""  # "" = a local Ray started in-process (or RAY_ADDRESS when set)
    num_workers: Positive = 1  # data-parallel training workers
    use_gpu: bool = False
    cpus_per_worker: PositiveFloat = 1.0  # also the torch threads of each training worker and inference actor
    storage_path: str = ""  # checkpoints and Ray results, a path every node sees (NFS) or a URI (s3://...);
    #                         "" = <out_dir>/ray
    max_failures: Annotated[int, Range(-1)] = 1  # worker losses tolerated per training run; -1 = no limit
    # training workers: PACK (fill a node first) | SPREAD | STRICT_SPREAD (one per node) | STRICT_PACK,
    # Ray's placement group strategies
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    crf_resource: str = ""  # custom resource of the CPU nodes (cluster.yaml: crf_node); set, the CRF tasks of
    #                         make-pseudo run only on nodes that have it; "" = any node with a free CPU


# Keys renamed since earlier versions: a config that still uses one is told the new name.
RENAMED = {
    "cam.bg_threshold": "cam.background_score",
    "pseudo.fg_threshold": "pseudo.fg_background_score",
    "pseudo.bg_threshold": "pseudo.bg_background_score",
    **{f"{section}.crf_{name}": f"{section}.crf.{name}" for section in ("pseudo", "seg")
       for name in ("iterations", "gt_prob", "gaussian_sxy", "gaussian_compat", "bilateral_sxy", "bilateral_srgb",
                    "bilateral_compat")},
}


@dataclass
class Config:
    out_dir: str = "runs/default"  # every stage writes below this folder
    data: DataConfig = field(default_factory=DataConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cam: CamConfig = field(default_factory=CamConfig)
    pseudo: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    irn: IrnConfig = field(default_factory=IrnConfig)
    seg: SegConfig = field(default_factory=SegConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "Config":
        cfg = _build(cls, data, prefix="", source=source)
        _check_rules(cfg, source)
        return cfg

    def with_overrides(self, overrides: list[str] | dict[str, Any]) -> "Config":
        return apply_overrides(self, overrides)

    def get(self, key: str) -> Any:
        """The value of a dotted key, e.g. cfg.get("cam.scales")."""
        value: Any = self
        for part in key.split("."):
            value = getattr(value, part)
        return value

    def resolved(self) -> "Config":
        """A copy with `{out_dir}` expanded and local paths made absolute (idempotent).

        Ray workers run in other directories (and on other hosts); `load_config` resolves once, before any work.
        """
        out_dir = self.out_dir if is_uri(self.out_dir) else str(Path(self.out_dir).resolve())
        overrides: dict[str, Any] = {"out_dir": out_dir}
        for key in ("data.root", "data.sbd_root", "data.coco_root", "ray.storage_path", "seg.labels_dir",
                    "seg.pretrained", "model.pretrained", "irn.pretrained"):
            value = self.get(key).replace("{out_dir}", out_dir)
            if value and "://" not in value:
                value = str(Path(value).resolve())
            overrides[key] = value
        return self.with_overrides(overrides)

    def dump(self, path: str | Path) -> None:
        """Writes the config as YAML (atomically; `path` may be a URI)."""
        write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def _check_rules(cfg: Config, source: str) -> None:
    """The rules that tie fields together, or that a type cannot say."""
    def fail(key: str, problem: str) -> None:
        raise ConfigError(f"{source}: {key} {problem}, got {cfg.get(key)!r}")

    if not cfg.out_dir:
        fail("out_dir", "must name a folder")
    for key in ("cam.scales", "seg.test_scales"):
        if not cfg.get(key) or cfg.get(key)[0] != 1.0:
            fail(key, "must start with 1.0 (the scale whose size the outputs take)")
    for key in ("seg.scales", "cam.sweep", "model.hspp_levels"):
        if not cfg.get(key):
            fail(key, "must not be empty")
    if len(cfg.seg.aspp_rates) != 4:
        fail("seg.aspp_rates", "must hold the 4 dilations of DeepLab v2's ASPP branches")
    for key in ("train.resize_long", "irn.scale_range"):
        low, *high = cfg.get(key)
        if len(high) != 1 or low > high[0]:
            fail(key, "must be [low, high] with low <= high")
    if cfg.pseudo.fg_background_score < cfg.pseudo.bg_background_score:
        fail("pseudo.fg_background_score", f"must be >= pseudo.bg_background_score ({cfg.pseudo.bg_background_score})")
    if cfg.train.batch_size % cfg.ray.num_workers:
        fail("train.batch_size", f"must divide evenly over ray.num_workers = {cfg.ray.num_workers} workers")
    irn_workers = cfg.irn.num_workers or cfg.ray.num_workers
    if cfg.irn.batch_size % irn_workers:
        fail("irn.batch_size", f"must divide evenly over {irn_workers} IRNet workers (irn.num_workers, else "
                               "ray.num_workers)")
    if cfg.irn.crop_size % 4:
        fail("irn.crop_size", "must be a multiple of 4 (the labels are taken at stride 4)")
    seg_workers = cfg.seg.num_workers or cfg.ray.num_workers
    if cfg.seg.batch_size % (seg_workers * cfg.seg.accumulation):
        fail("seg.batch_size", f"must divide evenly over {seg_workers} DeepLab workers (seg.num_workers, else "
                               f"ray.num_workers) x seg.accumulation = {cfg.seg.accumulation} sub-batches")
    if cfg.cam.classifier_epoch > cfg.train.epochs:
        fail("cam.classifier_epoch", f"must be at most train.epochs ({cfg.train.epochs})")
    if cfg.irn.init == "classifier" and not cfg.irn.pretrained:
        fail("irn.pretrained", "must name the checkpoint for irn.init = classifier")
    if cfg.seg.init in ("coco", "classifier") and not cfg.seg.pretrained:
        fail("seg.pretrained", f"must name the checkpoint for seg.init = {cfg.seg.init}")
    if cfg.seg.init == "coco" and cfg.seg.backbone != "resnet101":
        fail("seg.backbone", "must be resnet101 for seg.init = coco (the COCO checkpoint is a ResNet-101)")
    if cfg.data.dataset == "voc" and cfg.data.num_classes > 20:
        fail("data.num_classes", "must be at most 20 for data.dataset = voc")
    if cfg.data.dataset == "coco":
        for key in ("data.train_split", "data.cam_split", "data.eval_split"):
            if cfg.get(key) not in ("train", "val"):
                fail(key, "must be train or val for data.dataset = coco (the splits prepare-coco writes)")
        if cfg.seg.init == "coco":
            fail("seg.init", "must not be coco for data.dataset = coco (that checkpoint learnt COCO's masks)")
        if cfg.synth.enabled and not (cfg.synth.splits.get("train_aug") and cfg.synth.splits.get("val")):
            fail("synth.splits", "must give train_aug and val images (COCO's train2014 and val2014) for data.dataset "
                                 "= coco")
    elif cfg.synth.enabled and not cfg.synth.splits.get(cfg.data.train_split):
        fail("synth.splits", f"must give data.train_split ({cfg.data.train_split!r}) some images")


PACKAGED = resources.files("vwe") / "configs"


def packaged_configs() -> list[str]:
    """Names of the configs that ship inside the package (`vwe run --config synthetic`)."""
    return sorted(p.name.removesuffix(".yaml") for p in PACKAGED.iterdir() if p.name.endswith(".yaml"))


def config_source(name_or_path: str | Path) -> Path:
    """The YAML file of a packaged config name (`synthetic`, `voc`, ...) or of a path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml") and str(name_or_path) in packaged_configs():
        return Path(str(PACKAGED / f"{name_or_path}.yaml"))
    if not path.is_file():
        raise ConfigError(f"{name_or_path}: no such config file (packaged configs: {', '.join(packaged_configs())})")
    return path


def load_config(name_or_path: str | Path | None = None,
                overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Reads a YAML config (a path or a packaged name; missing keys take the defaults), applies `key=value`
    overrides, checks every value and resolves the paths (`Config.resolved`): the one config every stage reads."""
    data: dict[str, Any] = {}
    source = "defaults"
    if name_or_path is not None:
        path = config_source(name_or_path)
        source = str(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise ConfigError(f"{path}: cannot read config file ({err.strerror})") from err
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    cfg = Config.from_dict(data, source=source)
    return apply_overrides(cfg, overrides or []).resolved()


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
                raise ConfigError(f"override {key!r}: unknown key {'.'.join(parts[: i + 1])!r}{_renamed(key)}")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"override {key!r}: unknown key {key!r}{_renamed(key)}")
        node[parts[-1]] = value
    return Config.from_dict(data, source="overrides")


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def _build(cls: type, data: Any, prefix: str, source: str, defaults: Any = None) -> Any:
    """An instance of the dataclass `cls` from a mapping; missing keys keep `defaults` (the field's own default
    for a nested section, so a partial `seg.crf` keeps seg's CRF values, not CrfConfig's)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'top level'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        key = prefix + unknown[0]
        known = ", ".join(sorted(names))
        raise ConfigError(f"{source}: unknown key {key!r}{_renamed(key) or f' (known: {known})'}")
    defaults = cls() if defaults is None else defaults
    kwargs = {}
    for name, value in data.items():
        key = prefix + name
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            kwargs[name] = _build(kind, value, key + ".", source, getattr(defaults, name))
        else:
            kwargs[name] = _check(kind, value, key, source)
    return dataclasses.replace(defaults, **kwargs)


def _renamed(key: str) -> str:
    return f" (renamed to {RENAMED[key]!r})" if key in RENAMED else ""


def _check(kind: Any, value: Any, key: str, source: str) -> Any:
    """Returns `value` converted to `kind` where that is lossless (int -> float, list -> list), else raises.

    `Annotated[T, Range(...)]` also bounds the number (or every item of a list); `Literal[...]` lists the choices.
    """
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin is Annotated:
        value = _check(args[0], value, key, source)
        for bound in (a for a in args[1:] if isinstance(a, Range)):
            for item in value if isinstance(value, list) else [value]:
                problem = bound.check(item)
                if problem:
                    raise ConfigError(f"{source}: key {key!r} must be {problem}, got {value!r}")
        return value
    if origin is Literal:
        if isinstance(value, str) and value in args:
            return value
        raise ConfigError(f"{source}: key {key!r} must be one of {', '.join(map(str, args))}, got {value!r}")
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
