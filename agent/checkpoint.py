"""Checkpoints as safetensors files, written atomically, with JSON metadata and no pickle anywhere.

A checkpoint is a flat dict of named tensors plus one JSON document (`meta`: counters, config, RNG
states...) stored in the safetensors header under the key "omniloop". A CRC-32 of every tensor's
bytes goes in the header too ("omniloop.crc32"), so a flipped bit in the data is caught on load
rather than trained on.

Atomic: the file is written under a temporary name in the same directory, fsynced, and renamed over
`path` with os.replace; the directory is fsynced after, so the rename itself survives a power cut.
A crash at any point leaves either the old checkpoint or the new one at `path`, never half of one.

Optimizers have no safetensors form of their own: `optimizer_to_tensors` flattens the per-parameter
state (Adam: step, exp_avg, exp_avg_sq) into tensors named `<prefix>.state.<param index>.<name>`
and the param groups' hyperparameters into JSON, and `optimizer_from_tensors` undoes it.
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from agent.plain_json import json_default

META_KEY = "omniloop"
CRC_KEY = "omniloop.crc32"
# Per-parameter state tensors that must have their parameter's shape; checked on restore because
# torch's load_state_dict does not, and a mismatch would only fail (or broadcast) at the next step.
_PARAM_SHAPED_STATE = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg", "acc_delta")


class CheckpointError(Exception):
    """A checkpoint that is missing, corrupt, not ours, or lacks a key that was asked for."""


class CheckpointTensors(dict):
    """The tensors of a loaded checkpoint; a missing key raises CheckpointError naming the file."""

    def __init__(self, path: Path, tensors: dict[str, torch.Tensor]):
        super().__init__(tensors)
        self.path = path

    def __missing__(self, key: str) -> torch.Tensor:
        raise CheckpointError(f"{self.path}: checkpoint has no tensor {key!r} ({len(self)} tensors)")


def save_checkpoint(path: str | Path, tensors: Mapping[str, torch.Tensor | np.ndarray], meta: dict[str, Any]) -> None:
    """Write `tensors` and the JSON-serialisable `meta` to `path` atomically."""
    path = Path(path)
    prepared = _prepare_tensors(tensors, path)
    try:
        meta_json = json.dumps(meta, default=json_default)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{path}: checkpoint meta is not JSON-serialisable: {exc}") from None
    header = {
        META_KEY: meta_json,
        CRC_KEY: json.dumps({name: _crc32(t) for name, t in prepared.items()}),
        "format": "pt",  # what other safetensors tools expect of a torch file
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        save_file(prepared, tmp, metadata=header)
        with tmp.open("rb") as file:
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint -> (tensors on the CPU, meta). Raises CheckpointError naming `path`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with safe_open(path, framework="pt") as file:
            header = file.metadata() or {}
            tensors = {name: file.get_tensor(name) for name in file.keys()}
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    if META_KEY not in header:
        raise CheckpointError(f"{path}: not an omniloop checkpoint (no '{META_KEY}' in the safetensors metadata)")
    try:
        meta = json.loads(header[META_KEY])
        crcs = json.loads(header.get(CRC_KEY, "{}"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata ({exc})") from None
    for name, tensor in tensors.items():
        if name in crcs and crcs[name] != _crc32(tensor):
            raise CheckpointError(f"{path}: tensor {name!r} fails its CRC-32; the file is corrupt")
    return CheckpointTensors(path, tensors), meta


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """Only the meta of a checkpoint (counters, config), without reading its tensors."""
    path = Path(path)
    try:
        with safe_open(path, framework="pt") as file:
            return json.loads((file.metadata() or {})[META_KEY])
    except (OSError, SafetensorError, KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable omniloop checkpoint ({exc!r})") from None


def _prepare_tensors(tensors: Mapping[str, torch.Tensor | np.ndarray], path: Path) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors that own their storage, as safetensors requires."""
    prepared: dict[str, torch.Tensor] = {}
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"{path}: tensor names must be str, got {name!r}")
        if isinstance(value, np.ndarray):
            tensor = torch.from_numpy(np.ascontiguousarray(value))  # keeps the dtype (uint8 images stay uint8)
        elif isinstance(value, torch.Tensor):
            tensor = value.detach().cpu()
        else:
            raise TypeError(f"{path}: tensor {name!r} is a {type(value).__name__}, not a torch.Tensor or np.ndarray")
        # Views and tensors sharing one storage (tied weights, slices) are refused by safetensors:
        # copy anything that does not exactly fill its own storage.
        fills_storage = tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
        if not (tensor.is_contiguous() and fills_storage and tensor.storage_offset() == 0):
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        prepared[name] = tensor
    _unshare(prepared)
    return prepared


def _unshare(tensors: dict[str, torch.Tensor]) -> None:
    """Clone the second and later tensors that point at one storage (e.g. the same tensor twice)."""
    seen: set[int] = set()
    for name, tensor in tensors.items():
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen and tensor.numel() > 0:
            tensors[name] = tensor.clone()
        seen.add(pointer)


def _crc32(tensor: torch.Tensor) -> int:
    """CRC-32 of a tensor's bytes; bfloat16 and bool included, so through a uint8 view."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return zlib.crc32(flat.view(torch.uint8).numpy().tobytes()) if flat.numel() else 0


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------- optimizers


def optimizer_to_tensors(
    opt: torch.optim.Optimizer, prefix: str = "optim"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten an optimizer's state -> (tensors, JSON-able meta).

    Tensors: `<prefix>.state.<i>.<name>` for each tensor in parameter i's state (Adam: step (),
    exp_avg and exp_avg_sq shaped like the parameter), plus `<prefix>.group.<g>.<key>` for any
    hyperparameter held as a tensor. Meta: the param groups' hyperparameters and parameter indices,
    and the non-tensor entries of the per-parameter state.
    """
    state_dict = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in state_dict["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.state.{index}.{name}"] = value.detach()
            else:
                scalars.setdefault(str(index), {})[name] = value
    groups: list[dict[str, Any]] = []
    tensor_keys: list[list[str]] = []
    for g, group in enumerate(state_dict["param_groups"]):
        plain: dict[str, Any] = {}
        held_as_tensors: list[str] = []
        for key, value in group.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.group.{g}.{key}"] = value.detach()
                held_as_tensors.append(key)
            else:
                plain[key] = list(value) if isinstance(value, tuple) else value
        groups.append(plain)
        tensor_keys.append(held_as_tensors)
    meta = {"type": type(opt).__name__, "param_groups": groups, "group_tensors": tensor_keys, "state_scalars": scalars}
    return tensors, meta


def optimizer_from_tensors(
    opt: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: dict[str, Any], prefix: str = "optim"
) -> None:
    """Restore what `optimizer_to_tensors` flattened into `opt`, whose parameters must match in shape."""
    for key in ("type", "param_groups", "group_tensors", "state_scalars"):
        if key not in meta:
            raise CheckpointError(f"optimizer meta under prefix {prefix!r} lacks {key!r}")
    if meta["type"] != type(opt).__name__:
        raise CheckpointError(f"optimizer state under {prefix!r} is from {meta['type']}, not {type(opt).__name__}")
    current = opt.state_dict()["param_groups"]
    saved_sizes = [len(g["params"]) for g in meta["param_groups"]]
    if saved_sizes != [len(g["params"]) for g in current]:
        raise CheckpointError(
            f"optimizer state under {prefix!r} has param groups of sizes {saved_sizes}, "
            f"the optimizer {[len(g['params']) for g in current]}"
        )
    groups = [
        _restore_group(saved, now, [_require(tensors, f"{prefix}.group.{g}.{k}") for k in held], held)
        for g, (saved, now, held) in enumerate(zip(meta["param_groups"], current, meta["group_tensors"]))
    ]
    params = [p for group in opt.param_groups for p in group["params"]]
    indices = [i for group in meta["param_groups"] for i in group["params"]]
    state: dict[int, dict[str, Any]] = {}
    for param, index in zip(params, indices):
        head = f"{prefix}.state.{index}."
        entry: dict[str, Any] = {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}
        entry.update(meta["state_scalars"].get(str(index), {}))
        for name in _PARAM_SHAPED_STATE:
            if name in entry and entry[name].shape != param.shape:
                raise CheckpointError(
                    f"optimizer state {head}{name} has shape {tuple(entry[name].shape)}, "
                    f"its parameter {tuple(param.shape)}"
                )
        if entry:
            state[index] = entry
    opt.load_state_dict({"state": state, "param_groups": groups})


def _require(tensors: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    """tensors[key], or a CheckpointError naming the missing key."""
    if key not in tensors:
        where = f"{tensors.path}: " if isinstance(tensors, CheckpointTensors) else ""
        raise CheckpointError(f"{where}checkpoint has no tensor {key!r}")
    return tensors[key]


def _restore_group(
    saved: dict[str, Any], current: dict[str, Any], values: list[torch.Tensor], held: list[str]
) -> dict[str, Any]:
    """A saved param group with JSON lists turned back into the tuples the optimizer uses (Adam's betas)."""
    group = {k: tuple(v) if isinstance(current.get(k), tuple) and isinstance(v, list) else v for k, v in saved.items()}
    group.update(zip(held, values))
    return group
