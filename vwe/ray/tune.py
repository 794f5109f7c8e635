"""Hyper-parameter sweeps on Ray Tune: each trial trains the classifier on Ray Train, makes the CAMs of a held-out
split and reports their mIoU at the best background threshold. `run_side_by_side` runs any function of a config
as such trials (`vwe ablate`'s runs).

Ray 2.60 (Train V2) shapes the design:
- `Tuner(TorchTrainer)` is not supported. A trial is a small driver function (`_trial`) that runs `vwe.ray.train.fit`
  with `TuneReportCallback`, so every Train report reaches Tune, then the CAM stages on Ray Data.
- The driver holds 0.01 CPU; its Train workers and CAM actors are placed outside the trial's resources. What keeps
  trials from oversubscribing the cluster is `max_concurrent_trials` (by default what the cluster holds at the start).
- When ASHA stops a trial, Tune kills the driver while its Train run is alive. Only Ray Train's placement-group
  cleaner frees the workers' placement group, and it needs Ray's State API (the dashboard, from `ray[default]`);
  without it the next trials wait forever for workers. A sweep with a scheduler therefore checks, from the head
  node where that cleaner runs, that the State API answers, and refuses to start otherwise.
- Every trial has its own out_dir and Train storage, so its own Train run (a run with the same name and storage
  resumes): a sweep restored after its driver died (`Tuner.restore`) keeps its finished trials, and the unfinished
  ones resume from their last Train checkpoint.
"""
from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import asdict, dataclass, field
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator

from vwe import storage
from vwe.config import Config
from vwe.errors import ConfigError
from vwe.io import atomic_path, write_text
from vwe.ray.cluster import init_ray
from vwe.ray.train import fit
from vwe.run_folder import RunFolder
from vwe.stages import train_cam
from vwe.stages.eval_cam import evaluate_cams
from vwe.stages.make_cam import make_cams

log = logging.getLogger(__name__)

HEATMAP_AXES = ("model.num_words", "model.hspp_gamma")  # columns x rows of the heat map
DISTRIBUTIONS = ("uniform", "loguniform", "randint")  # {name: [low, high]} in a space file, sampled per trial
DRIVERS_FILE = "drivers.txt"  # Ray job ids of the drivers that ran a sweep, one per line


@dataclass
class Scheduler:
    name: str = "fifo"  # fifo (every trial runs to the end) | asha (stops bad trials at epoch rungs)
    grace_period: int = 1  # epochs a trial runs before ASHA may stop it
    reduction_factor: int = 2  # ASHA keeps the best 1/reduction_factor of the trials at each rung


@dataclass
class Space:
    """A sweep, read from a YAML space file (`tune/space_voc.yaml`)."""

    params: dict[str, Any]  # dotted config key -> list of values, or {uniform|loguniform|randint: [low, high]}
    search: str = "grid"  # grid: every combination of the lists; random: lists are drawn from, num_samples trials
    num_samples: int = 1  # grid: repeats of the whole grid; random: trials
    seed: int = 0  # of the random draws
    set: dict[str, Any] = field(default_factory=dict)  # overrides of every trial: resources, train.eval_images ...
    eval_split: str = ""  # held-out split whose CAM mIoU ranks the trials; "" = data.eval_split
    max_concurrent_trials: int = 0  # 0 = as many as the cluster's GPUs (CPUs) hold at the start
    scheduler: Scheduler = field(default_factory=Scheduler)


def load_space(path: str | Path, base: Config, overrides: dict[str, Any] | None = None) -> Space:
    """Reads and checks a space file against `base`: every key must exist and every value fit its type.

    `overrides` replace top-level values and `scheduler` (a scheduler name), as the command line does.
    """
    data = _read_yaml(path, "space file")
    if isinstance(data, dict):
        for key, value in (overrides or {}).items():
            if key == "scheduler":
                data["scheduler"] = {**(data.get("scheduler") or {}), "name": value}
            else:
                data[key] = value
    return _space_from_dict(data, base, source=str(path))


def _read_yaml(path: str | Path, what: str) -> Any:
    try:
        text = storage.read_text(path)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read {what} ({err.strerror or err})") from err
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err


def _space_from_dict(data: Any, base: Config, source: str) -> Space:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    known = {"params", "search", "num_samples", "seed", "set", "eval_split", "max_concurrent_trials", "scheduler"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    scheduler = data.get("scheduler") or {}
    if not isinstance(scheduler, dict) or set(scheduler) - {"name", "grace_period", "reduction_factor"}:
        raise ConfigError(f"{source}: scheduler must be a mapping of name, grace_period, reduction_factor")
    space = Space(**{"params": {}, **data, "scheduler": Scheduler(**scheduler)})
    if not isinstance(space.eval_split, str) or not isinstance(space.seed, int):
        raise ConfigError(f"{source}: eval_split must be a split name and seed an integer")
    if space.search not in ("grid", "random"):
        raise ConfigError(f"{source}: search must be grid or random, got {space.search!r}")
    if space.scheduler.name not in ("fifo", "asha"):
        raise ConfigError(f"{source}: scheduler.name must be fifo or asha, got {space.scheduler.name!r}")
    for key, value in (("num_samples", space.num_samples), ("scheduler.grace_period", space.scheduler.grace_period),
                       ("scheduler.reduction_factor", space.scheduler.reduction_factor)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{source}: {key} must be a positive integer, got {value!r}")
    if space.scheduler.reduction_factor < 2:
        raise ConfigError(f"{source}: scheduler.reduction_factor must be at least 2")
    if not isinstance(space.max_concurrent_trials, int) or space.max_concurrent_trials < 0:
        raise ConfigError(f"{source}: max_concurrent_trials must be 0 (from the cluster) or a positive integer")
    if not isinstance(space.params, dict) or not space.params:
        raise ConfigError(f"{source}: params must map config keys to values to search, e.g. model.num_words: [64, 128]")
    if not isinstance(space.set, dict):
        raise ConfigError(f"{source}: set must map config keys to values")
    fixed = _checked(base, space.set, f"{source}: set")
    for key, spec in space.params.items():
        if isinstance(spec, list) and spec:
            for value in spec:
                _checked(fixed, {key: value}, f"{source}: params.{key}")
        elif (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DISTRIBUTIONS
              and _is_range(next(iter(spec.values())))):
            kind, (low, high) = next(iter(spec.items()))
            _checked(fixed, {key: low}, f"{source}: params.{key}")
            if kind == "randint" and not (isinstance(low, int) and isinstance(high, int)):
                raise ConfigError(f"{source}: params.{key}: randint needs integer bounds, got {[low, high]}")
            if kind == "loguniform" and low <= 0:
                raise ConfigError(f"{source}: params.{key}: loguniform needs positive bounds, got {[low, high]}")
        else:
            raise ConfigError(f"{source}: params.{key} must be a non-empty list of values or one of "
                              f"{{{'|'.join(DISTRIBUTIONS)}: [low, high]}}, got {spec!r}")
    if space.scheduler.name == "asha":
        train = fixed.train
        if train.eval_images < 1:
            raise ConfigError(f"{source}: scheduler asha ranks trials by the per-epoch CAM mIoU: set "
                              "train.eval_images (images of data.cam_split) under `set:`")
        if space.scheduler.grace_period >= train.epochs:
            raise ConfigError(f"{source}: scheduler.grace_period ({space.scheduler.grace_period}) must be below "
                              f"train.epochs ({train.epochs}): ASHA decides only at epochs before the last")
    return space


def _is_range(bounds: Any) -> bool:
    return (isinstance(bounds, list) and len(bounds) == 2
            and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds) and bounds[0] < bounds[1])


def _checked(cfg: Config, overrides: dict[str, Any], where: str) -> Config:
    try:
        return cfg.with_overrides(overrides)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from err


def param_space(space: Space) -> dict[str, Any]:
    """Tune's search space over the dotted keys: grid_search / choice for lists, the named distributions."""
    out: dict[str, Any] = {}
    for key, spec in space.params.items():
        if isinstance(spec, list):
            out[key] = tune.grid_search(spec) if space.search == "grid" else tune.choice(spec)
        else:
            kind, (low, high) = next(iter(spec.items()))
            out[key] = {"uniform": tune.uniform, "loguniform": tune.loguniform,
                        "randint": lambda a, b: tune.randint(a, b + 1)}[kind](low, high)
    return out


@dataclass
class Sweep:
    """Where a sweep lives: results and trial folders in `directory`, Tune's experiment state in
    `<storage>/sweep_<name>` and the trials' Train checkpoints in `<storage>/sweep_<name>_trials/<trial id>`."""

    name: str
    directory: str | Path  # <out_dir>/sweeps/<name>: config.yaml, space.yaml, results.*, heatmap.png, best.yaml,
    #                        drivers.txt, trials/ (a local path or a URI, as out_dir)
    storage: str  # ray.storage_path, else <out_dir>/ray (a local path or a URI)

    @classmethod
    def of(cls, cfg: Config, name: str) -> "Sweep":
        return cls(name, storage.join(cfg.out_dir, "sweeps", name), str(RunFolder.of(cfg).train_runs))

    def file(self, *parts: str) -> str | Path:
        return storage.join(self.directory, *parts)

    @property
    def experiment_name(self) -> str:
        return f"sweep_{self.name}"

    @property
    def experiment(self) -> str:
        return f"{self.storage}/{self.experiment_name}"


def trial_config(base: Config, overrides: dict[str, Any], out_dir: str | Path, train_storage: str) -> Config:
    """A trial's config: the (resolved) base, the space's `set` and sampled values, and the trial's own out_dir
    and Train storage, so trials never resume each other's Train runs."""
    cfg = base.with_overrides({**overrides, "out_dir": str(out_dir), "ray.storage_path": train_storage})
    if cfg.cam.num_actors == 0:
        # the trial's share of the cluster: as many CAM actors as it had training workers
        cfg = cfg.with_overrides({"cam.num_actors": cfg.ray.num_workers})
    return cfg


def _trial(config: dict[str, Any], base: dict[str, Any], fixed: dict[str, Any], sweep: Sweep,
           eval_split: str) -> None:
    """One trial (runs in Tune's trial actor): train with Train's reports forwarded to Tune, then the held-out
    CAM mIoU as the final report."""
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(Config.from_dict(base), {**fixed, **config["set"]}, sweep.file("trials", trial_id),
                       f"{sweep.experiment}_trials/{trial_id}")
    trained = fit(cfg, train_cam.NAME, train_cam.train, callbacks=[TuneReportCallback()])
    make_cams(cfg, eval_split)
    summary = evaluate_cams(cfg, eval_split)
    # the CAM files were only needed for this number (about 0.8 GB per trial on VOC val); the report stays
    storage.delete(RunFolder.of(cfg).cams)
    tune.report({"eval_miou": summary["miou"], "eval_best_miou": summary["best_miou"],
                 "eval_best_threshold": summary["best_threshold"],
                 "eval_images": summary["images"], "steps": trained["step"], "epoch": trained["epoch"],
                 "resumed_from": trained["resumed_from"]})


def run_sweep(cfg: Config, space_path: str | Path, *, name: str | None = None, resume: bool = False,
              overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Runs (or with `resume`, continues) the sweep of `space_path` over `cfg`; writes the results table, the heat
    map and the best config, and returns a summary. `overrides` change the space file's values (`load_space`).

    A resumed sweep uses the config and space saved when it started; finished trials are not run again.
    """
    sweep = Sweep.of(cfg, name or Path(space_path).stem)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if resume:
        if overrides:
            log.warning("--resume: ignoring %s; the sweep keeps the settings it started with", sorted(overrides))
        saved = sweep.file("config.yaml")
        if not storage.is_file(saved) or not tune.Tuner.can_restore(sweep.experiment):
            raise ConfigError(f"--resume: no sweep to resume in {sweep.directory} (experiment {sweep.experiment})")
        base = Config.from_dict(_read_yaml(saved, "config"), source=str(saved))
        space = load_space(sweep.file("space.yaml"), base)
        log.info("resuming the sweep in %s with its saved config and space", sweep.directory)
    else:
        if tune.Tuner.can_restore(sweep.experiment):
            raise ConfigError(f"a sweep named {sweep.name!r} exists in {sweep.experiment}: pass --resume to continue "
                              "it, or --name to start another")
        base = cfg.resolved()
        space = load_space(space_path, base, overrides)

    init_ray(cfg.ray)  # this invocation's address, not the saved one
    if space.scheduler.name != "fifo":
        _require_state_api(space.scheduler.name)
        # Only epoch-end reports carry cam_miou (ASHA skips the others); Tune would otherwise reject them.
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    if resume:
        _remove_leftover_placement_groups(sweep)
    else:
        _prepare_data(base, space)
        base.dump(sweep.file("config.yaml"))
        write_text(sweep.file("space.yaml"), yaml.safe_dump(asdict(space), sort_keys=False))
    _record_driver(sweep)
    fixed_cfg = base.with_overrides(space.set)
    eval_split = space.eval_split or base.data.eval_split
    trainable = tune.with_resources(
        tune.with_parameters(_trial, base=base.to_dict(), fixed=space.set, sweep=sweep, eval_split=eval_split),
        {"cpu": 0.01})  # the driver only waits; Tune rejects 0
    if resume:
        tuner = tune.Tuner.restore(sweep.experiment, trainable=trainable, resume_unfinished=True,
                                   restart_errored=True)
    else:
        concurrent = space.max_concurrent_trials or _cluster_concurrency(fixed_cfg)
        log.info("sweep %s: at most %d trials at once, each %d worker(s)%s", sweep.name, concurrent,
                 fixed_cfg.ray.num_workers, " with a GPU" if fixed_cfg.ray.use_gpu else "")
        tuner = tune.Tuner(
            trainable,
            param_space={"set": param_space(space)},
            # the generator caps concurrency itself (TuneConfig.max_concurrent_trials ignores a generator)
            tune_config=tune.TuneConfig(num_samples=space.num_samples, scheduler=_scheduler(space, fixed_cfg),
                                        search_alg=BasicVariantGenerator(max_concurrent=concurrent,
                                                                         random_state=space.seed)),
            run_config=tune.RunConfig(name=sweep.experiment_name, storage_path=sweep.storage))
    grid = tuner.fit()
    rows = result_rows(grid, base, space)
    return write_results(rows, base, space, sweep, eval_split)


def run_side_by_side(function: Callable[[Config], Any], configs: list[Config], name: str,
                     storage_path: str) -> None:
    """Runs `function(cfg)` for every config, each as a Ray Tune trial, as many at once as the cluster holds (the
    trial itself holds 0.01 CPU; the Train workers and actors of the stages it runs are placed as usual). A trial
    that fails raises its error here. The trials keep their results in their own run folders: a trial is a
    function of its config, and a re-run of a finished one should find its outputs complete."""
    init_ray(configs[0].ray)
    concurrent = _cluster_concurrency(configs[0])
    log.info("%s: %d run(s), at most %d at once", name, len(configs), concurrent)
    trainable = tune.with_resources(
        tune.with_parameters(_call, function=function, configs=[cfg.to_dict() for cfg in configs]), {"cpu": 0.01})
    tuner = tune.Tuner(
        trainable, param_space={"index": tune.grid_search(list(range(len(configs))))},
        tune_config=tune.TuneConfig(search_alg=BasicVariantGenerator(max_concurrent=concurrent)),
        run_config=tune.RunConfig(name=name, storage_path=storage_path, verbose=0))
    for result in tuner.fit():
        if result.error is not None:
            raise result.error


def _call(config: dict[str, Any], function: Callable[[Config], Any], configs: list[dict[str, Any]]) -> None:
    function(Config.from_dict(configs[config["index"]]))
    tune.report({"done": 1})


def _record_driver(sweep: Sweep) -> None:
    """Adds this driver's Ray job id to the sweep's `drivers.txt` (see `_remove_leftover_placement_groups`)."""
    path = sweep.file(DRIVERS_FILE)
    previous = storage.read_text(path) if storage.is_file(path) else ""
    write_text(path, previous + ray.get_runtime_context().get_job_id() + "\n")


def _remove_leftover_placement_groups(sweep: Sweep) -> None:
    """Removes the placement groups still held by earlier drivers of this sweep that are gone.

    Ray removes a dead driver's placement groups, but a Train controller of that driver which is restarting its
    workers at that moment can create one more afterwards, and nothing removes it (seen when killing a driver
    here); it would hold the resources the resumed trials wait for.
    """
    from ray.job_submission import JobStatus
    from ray.util.placement_group import PlacementGroup, remove_placement_group
    from ray.util.state import list_jobs, list_placement_groups
    from ray.util.state.exception import RayStateApiException

    path = sweep.file(DRIVERS_FILE)
    drivers = set(storage.read_text(path).split()) if storage.is_file(path) else set()
    try:
        running = {job.job_id for job in list_jobs() if job.status in (JobStatus.PENDING, JobStatus.RUNNING)}
        groups = list_placement_groups(filters=[("state", "!=", "REMOVED")], detail=True, limit=10_000)
    except (RayStateApiException, ConnectionError) as err:
        log.warning("cannot list placement groups to free those of earlier drivers (%s); if resumed trials wait "
                    "for resources, remove them by hand", err)
        return
    for group in groups:
        if group.creator_job_id in drivers - running and not group.is_detached:
            log.info("removing placement group %s left by driver %s", group.placement_group_id, group.creator_job_id)
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group.placement_group_id))))


def _prepare_data(cfg: Config, space: Space) -> None:
    """Makes the synthetic benchmark once, before any trial (trials share data.root), and checks that the splits
    the trials read exist, so a missing one fails here and not in every trial."""
    from vwe.data.voc import VOCDataset

    if cfg.synth.enabled:
        from vwe.data.synth import generate

        synth = cfg.synth
        generate(cfg.data.root, synth.splits, synth.height, synth.width, num_classes=synth.num_classes,
                 seed=synth.seed, part_scale=synth.part_scale, context_bias=synth.context_bias)
    voc = VOCDataset(cfg.data.root)
    for split in {cfg.data.train_split, cfg.data.cam_split, space.eval_split or cfg.data.eval_split}:
        voc.split_ids(split)


def _require_state_api(scheduler: str) -> None:
    error = ray.get(_state_api_error.remote())
    if error:
        raise ConfigError(
            f"scheduler {scheduler} stops trials early, and Ray Train frees a stopped trial's workers only through "
            "Ray's State API, which its placement-group cleaner on the head node cannot reach here, so later trials "
            "would wait forever. Install ray[default] and start Ray with the dashboard; with several Ray instances "
            "on one host, set RAY_API_SERVER_ADDRESS=http://<dashboard host:port> before starting this one. Or use "
            f"scheduler.name: fifo. ({error})")


# where Ray Train's placement-group cleaner runs (the head node), and with the same address discovery
@ray.remote(num_cpus=0, resources={"node:__internal_head__": 0.001})
def _state_api_error() -> str:
    """"" when the State API answers from this worker, else the error."""
    from ray.util.state import list_actors
    from ray.util.state.exception import RayStateApiException

    try:
        list_actors(limit=1, timeout=30, raise_on_missing_output=False)
    except (RayStateApiException, ConnectionError) as err:
        return str(err)
    return ""


def _cluster_concurrency(cfg: Config) -> int:
    """Trials that fit the cluster now: its GPUs over the trial's GPUs, or on CPU its CPUs over the trial's workers
    plus one CPU for the CAM stage's read tasks (a CAM actor pool holding every CPU starves them)."""
    resources = ray.cluster_resources()
    if cfg.ray.use_gpu:
        return max(1, int(resources.get("GPU", 0) // cfg.ray.num_workers))
    return max(1, int(resources.get("CPU", 0) // (cfg.ray.num_workers * cfg.ray.cpus_per_worker + 1)))


def _scheduler(space: Space, cfg: Config) -> ASHAScheduler | None:
    if space.scheduler.name == "fifo":
        return None
    # Rungs only before the last epoch (max_t) and no stop at max_t: a trial that trains to the end always gets
    # its held-out evaluation. Reports between epochs carry no cam_miou, so ASHA ignores them.
    return ASHAScheduler(
        time_attr="epoch", metric="cam_miou", mode="max", max_t=cfg.train.epochs - 1,
        grace_period=space.scheduler.grace_period, reduction_factor=space.scheduler.reduction_factor,
        stop_last_trials=False)


def result_rows(grid: tune.ResultGrid, base: Config, space: Space) -> list[dict[str, Any]]:
    """One row per trial: id, status (finished | stopped early by the scheduler | error), searched values, k and
    gamma, the held-out CAM mIoU and its threshold, the last per-epoch CAM mIoU, the last epoch, wall seconds and
    the error's last line."""
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        history = result.metrics_dataframe
        params = (result.config or {}).get("set", {})
        cfg = base.with_overrides({**space.set, **params})

        def last(column: str) -> float:
            if history is None or column not in history:
                return math.nan
            values = history[column].dropna()
            return float(values.iloc[-1]) if len(values) else math.nan

        eval_miou = last("eval_miou")
        status = "error" if result.error else "finished" if not math.isnan(eval_miou) else "stopped"
        row = {"trial_id": metrics.get("trial_id", storage.name(result.path)), "status": status}
        row.update({key: params.get(key) for key in space.params})
        row.update({key: _get(cfg, key) for key in HEATMAP_AXES if key not in space.params})
        row.update({"eval_miou": eval_miou, "eval_best_miou": last("eval_best_miou"),
                    "eval_best_threshold": last("eval_best_threshold"), "cam_miou": last("cam_miou"),
                    "epoch": last("epoch"), "wall_s": float(metrics.get("time_total_s", math.nan)),
                    "error": _last_line(result.error)})
        rows.append(row)
    return sorted(rows, key=lambda r: r["trial_id"])


def _last_line(error: Exception | None) -> str:
    """The line of a trial's error that names the cause (Ray wraps it in a traceback), without colour codes."""
    if error is None:
        return ""
    lines = [line for line in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else type(error).__name__


def _get(cfg: Config, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def write_results(rows: list[dict[str, Any]], base: Config, space: Space, sweep: Sweep,
                  eval_split: str) -> dict[str, Any]:
    """`results.csv` / `results.parquet` (one row per trial), `heatmap.png` and `best.yaml` in the sweep folder."""
    import pandas as pd

    table = pd.DataFrame(rows)
    files = {"csv": sweep.file("results.csv"), "parquet": sweep.file("results.parquet"),
             "heatmap": sweep.file("heatmap.png"), "best": sweep.file("best.yaml")}
    with atomic_path(files["csv"]) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(files["parquet"]) as tmp:
        table.to_parquet(tmp, index=False)
    plot_heatmap(table, files["heatmap"], f"CAM mIoU (%) on {eval_split} at cam.background_score "
                                          f"{base.cam.background_score:g}")
    finished = table[table["status"] == "finished"]
    summary: dict[str, Any] = {"sweep": str(sweep.directory), "trials": len(table),
                               **{s: int((table["status"] == s).sum()) for s in ("finished", "stopped", "error")}}
    if len(finished):
        best = finished.loc[finished["eval_miou"].idxmax()]
        params = {key: _plain(best[key]) for key in space.params}
        # the best trial's settings, but not its share of the cluster nor the per-epoch signal for the scheduler
        recipe = {k: v for k, v in space.set.items() if not k.startswith("ray.") and k != "train.eval_images"}
        best_cfg = base.with_overrides({**recipe, **params, "out_dir": str(sweep.file("best"))})
        header = (f"# vwe tune {sweep.name}: best of {len(table)} trials, trial {best['trial_id']} "
                  f"(CAM mIoU {100 * best['eval_miou']:.1f} on {eval_split}): {params}\n")
        write_text(files["best"], header + yaml.safe_dump(best_cfg.to_dict(), sort_keys=False))
        summary["best"] = {"trial_id": best["trial_id"], "params": params, "eval_miou": float(best["eval_miou"]),
                           "eval_best_miou": float(best["eval_best_miou"]),
                           "eval_best_threshold": float(best["eval_best_threshold"]),
                           "classifier": str(sweep.file("trials", best["trial_id"], "classifier"))}
    else:
        storage.delete(files["best"])
        del files["best"]
        log.warning("sweep %s: no trial finished, so there is no best config", sweep.name)
    summary["files"] = {k: str(v) for k, v in files.items()}
    return summary


def _plain(value: Any) -> Any:
    """numpy scalars (from the table) -> Python, for the config and YAML."""
    return value.item() if hasattr(value, "item") else value


def plot_heatmap(table: Any, path: Path, title: str) -> None:
    """mIoU (%) over codebook size k (columns) and HSPP gamma (rows); a cell shows the best finished trial with
    that pair, or why there is none (stopped early / error)."""
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    x_key, y_key = HEATMAP_AXES
    xs = sorted(table[x_key].unique())
    ys = sorted(table[y_key].unique())
    grid = np.full((len(ys), len(xs)), np.nan)
    notes = [["" for _ in xs] for _ in ys]
    for (x, y), group in table.groupby([x_key, y_key]):
        i, j = ys.index(y), xs.index(x)
        done = group["eval_miou"].dropna()
        if len(done):
            grid[i, j] = 100 * done.max()
            notes[i][j] = f"{grid[i, j]:.1f}"
        elif (group["status"] == "stopped").any():
            notes[i][j] = f"stopped\nepoch {group['epoch'].max():g}"
        else:
            notes[i][j] = "error"
    fig = Figure(figsize=(1.2 * len(xs) + 2.5, 0.8 * len(ys) + 1.8))
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
    ax.set_facecolor("0.85")
    fig.colorbar(image, ax=ax, label="mIoU (%)")
    ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
    ax.set_yticks(range(len(ys)), [f"{y:g}" for y in ys])
    ax.set_xlabel("codebook size k (model.num_words)")
    ax.set_ylabel("HSPP gamma (model.hspp_gamma)")
    ax.set_title(title, fontsize=10)
    finite = grid[np.isfinite(grid)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0
    for i in range(len(ys)):
        for j in range(len(xs)):
            light = np.isfinite(grid[i, j]) and grid[i, j] < middle
            ax.text(j, i, notes[i][j], ha="center", va="center", fontsize=8, color="white" if light else "black")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)

