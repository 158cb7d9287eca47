"""Checkpoints: model + Adam continue identically after a round trip; bad files name themselves."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from agent import checkpoint
from agent.checkpoint import (
    CheckpointError,
    load_checkpoint,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_checkpoint,
)


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))


def train_step(model: nn.Module, opt: torch.optim.Optimizer, step: int) -> None:
    generator = torch.Generator().manual_seed(step)
    x, y = torch.randn(8, 5, generator=generator), torch.randn(8, 3, generator=generator)
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()


def test_model_and_adam_continue_identically(tmp_path: Path) -> None:
    model = make_model(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.8, 0.95), weight_decay=1e-4)
    for step in range(4):
        train_step(model, opt, step)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = optimizer_to_tensors(opt)
    tensors.update(opt_tensors)
    image = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    meta = {"env_step": 1234, "episode": 7, "rng": [1, 2, 3], "optim": opt_meta, "note": "ok"}
    path = tmp_path / "ckpt" / "latest.safetensors"
    save_checkpoint(path, {**tensors, "memory.images": image}, meta)

    loaded, loaded_meta = load_checkpoint(path)
    assert loaded_meta == meta
    assert loaded["memory.images"].dtype == torch.uint8
    np.testing.assert_array_equal(loaded["memory.images"].numpy(), image)

    restored = make_model(1)  # different initial weights, so the load must do the work
    restored.load_state_dict({k[len("model."):]: v for k, v in loaded.items() if k.startswith("model.")})
    restored_opt = torch.optim.Adam(restored.parameters(), lr=1.0)  # wrong hyperparameters, to be overwritten
    optimizer_from_tensors(restored_opt, loaded, loaded_meta["optim"])
    assert restored_opt.param_groups[0]["lr"] == 3e-3
    assert restored_opt.param_groups[0]["betas"] == (0.8, 0.95)

    train_step(model, opt, 4)
    train_step(restored, restored_opt, 4)
    for (name, a), b in zip(model.named_parameters(), restored.parameters()):
        assert torch.equal(a, b), name
    assert os.listdir(path.parent) == ["latest.safetensors"]  # no temp files left behind


def test_shared_and_strided_tensors_are_saved(tmp_path: Path) -> None:
    base = torch.arange(12.0).reshape(3, 4)
    tensors = {"base": base, "same": base, "column": base[:, 1], "transposed": base.t()}
    tensors["bool"] = torch.tensor([True, False])
    save_checkpoint(tmp_path / "c.safetensors", tensors, {})
    loaded, meta = load_checkpoint(tmp_path / "c.safetensors")
    assert meta == {}
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor), name


def test_truncated_corrupt_and_missing_files_name_the_path(tmp_path: Path) -> None:
    path = tmp_path / "good.safetensors"
    save_checkpoint(path, {"w": torch.arange(100.0)}, {"step": 3})
    data = path.read_bytes()

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[:-7])
    with pytest.raises(CheckpointError, match="truncated.safetensors"):
        load_checkpoint(truncated)

    flipped = tmp_path / "flipped.safetensors"
    flipped.write_bytes(data[:-20] + bytes([data[-20] ^ 0x40]) + data[-19:])
    with pytest.raises(CheckpointError, match="flipped.safetensors.*'w' fails its CRC-32"):
        load_checkpoint(flipped)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 3)
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        load_checkpoint(garbage)

    with pytest.raises(CheckpointError, match="absent.safetensors.*not found"):
        load_checkpoint(tmp_path / "absent.safetensors")

    loaded, _ = load_checkpoint(path)
    with pytest.raises(CheckpointError, match="good.safetensors.*no tensor 'model.w'"):
        loaded["model.w"]


def test_foreign_safetensors_file_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="foreign.safetensors.*not an omniloop checkpoint"):
        load_checkpoint(path)


def test_crash_while_saving_keeps_the_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "latest.safetensors"
    save_checkpoint(path, {"w": torch.ones(4)}, {"version": 1})

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"w": torch.zeros(4)}, {"version": 2})
    tensors, meta = load_checkpoint(path)
    assert meta == {"version": 1} and torch.equal(tensors["w"], torch.ones(4))
    assert os.listdir(tmp_path) == ["latest.safetensors"]


def test_optimizer_state_must_fit(tmp_path: Path) -> None:
    model = make_model(0)
    opt = torch.optim.Adam(model.parameters())
    train_step(model, opt, 0)
    tensors, meta = optimizer_to_tensors(opt, prefix="wm.optim")
    assert set(tensors) >= {"wm.optim.state.0.step", "wm.optim.state.0.exp_avg", "wm.optim.state.0.exp_avg_sq"}

    other = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 4))  # last layer one output wider
    with pytest.raises(CheckpointError, match=r"wm.optim.state.2.exp_avg has shape \(3, 16\), its parameter \(4, 16\)"):
        optimizer_from_tensors(torch.optim.Adam(other.parameters()), tensors, meta, prefix="wm.optim")
    with pytest.raises(CheckpointError, match="from Adam, not SGD"):
        optimizer_from_tensors(torch.optim.SGD(model.parameters(), lr=0.1), tensors, meta, prefix="wm.optim")
    with pytest.raises(CheckpointError, match=r"sizes \[4\], the optimizer \[2\]"):
        optimizer_from_tensors(torch.optim.Adam(model[0].parameters()), tensors, meta, prefix="wm.optim")


def test_meta_must_be_json(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="bad.safetensors.*not JSON-serialisable"):
        save_checkpoint(tmp_path / "bad.safetensors", {}, {"model": object()})
    assert not (tmp_path / "bad.safetensors").exists()
