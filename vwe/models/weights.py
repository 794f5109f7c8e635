"""Loading torchvision-format ImageNet checkpoints into the backbone.

Nothing here runs at model construction: a checkpoint is read only when `load_backbone` is called.
The standard ones are torchvision's model-zoo files, e.g.
https://download.pytorch.org/models/resnet50-19c8e357.pth and .../resnet101-5d3b4d8f.pth (METHOD §1.1).
"""
from __future__ import annotations

import pickle
import urllib.error
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from vwe import storage
from vwe.errors import ConfigError, DataError

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP and torch.compile
_LISTED_KEYS = 8  # keys named in an error message before "... and N more"


def check_weights(path_or_url: str, key: str) -> None:
    """Reads a checkpoint as `load_backbone` will, so that a missing, unreadable or foreign file is found before
    any worker starts; errors name `key`, the config field that points at it."""
    _read_state_dict(path_or_url, key)


def load_backbone(backbone: nn.Module, path_or_url: str, *,
                  rename: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None) -> None:
    """Copies a torchvision-format state dict (a local path, an object-store URI or an http(s) URL) into `backbone`.

    A URL is fetched into the torch hub cache (needs network on first use). Wrapper prefixes (`module.`,
    `_orig_mod.`) are stripped and the ImageNet head (`fc.*`) is dropped; any other missing, unexpected or
    mis-shaped key is an error naming the keys. Files are read with `weights_only=True`: pickled objects other
    than tensors and plain containers are refused. `rename` maps a foreign layout's names to torchvision's first
    (e.g. `vwe.models.deeplab.coco_to_backbone_names`).
    """
    state = _read_state_dict(path_or_url, "weights")
    state = {_strip_prefixes(name): value for name, value in state.items()}
    if rename is not None:
        state = rename(state)
    state = {name: value for name, value in state.items() if not name.startswith("fc.")}
    own = backbone.state_dict()
    mismatched = [
        f"{name} {tuple(value.shape)} vs {tuple(own[name].shape)}"
        for name, value in state.items()
        if name in own and value.shape != own[name].shape
    ]
    if mismatched:
        raise DataError(f"{path_or_url}: tensors of the wrong shape (checkpoint vs model): {_listing(mismatched)}")
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if problems:
        raise DataError(f"{path_or_url}: not a checkpoint of this backbone; " + "; ".join(problems))


def classifier_to_backbone_names(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The `backbone.*` tensors of a classifier state dict, without the prefix; the heads and codebook dropped
    (DeepLab's and IRNet's `init: classifier`)."""
    return {name.removeprefix("backbone."): value for name, value in state.items() if name.startswith("backbone.")}


def _read_state_dict(path_or_url: str, key: str) -> dict[str, Tensor]:
    """The state dict at `path_or_url`; `key` names what points at it in the errors."""
    try:
        if path_or_url.startswith(("http://", "https://")):
            state = torch.hub.load_state_dict_from_url(
                path_or_url, map_location="cpu", weights_only=True, check_hash=True, progress=False
            )
        else:  # a local path or an object-store URI (s3://..., e.g. a classifier exported to an s3 run folder)
            if not storage.is_file(path_or_url):
                raise ConfigError(f"{key}: no such file {path_or_url!r}")
            with storage.local_copy(path_or_url) as local:
                state = torch.load(local, map_location="cpu", weights_only=True)
    except urllib.error.URLError as err:
        raise ConfigError(
            f"{key}: cannot download {path_or_url} ({err.reason}); download it elsewhere and pass its path"
        ) from err
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path_or_url}: not a readable weights-only state dict ({first_line})") from err
    if not isinstance(state, dict) or not all(
        isinstance(key, str) and isinstance(value, Tensor) for key, value in state.items()
    ):
        raise DataError(f"{path_or_url}: expected a flat mapping of parameter names to tensors")
    return state


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                stripped = True
    return key


def _listing(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_LISTED_KEYS])
    return shown if len(keys) <= _LISTED_KEYS else f"{shown} ... and {len(keys) - _LISTED_KEYS} more"
