"""One typed config tree: YAML files fill dataclasses, and `key=value` overrides any field.

Every package owns the dataclass of its own options; this module only composes them and checks
what comes in. An unknown key, a value of the wrong type or a missing file is refused with an error
that names the dotted path of the field (`planner.horizon`) and what was expected.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from planner.config import DeliberationConfig, PlannerConfig
from sim.config import EnvConfig
from agent.memory import MemoryConfig
from agent.objectives import ObjectiveConfig
from robot_bridge.config import BridgeConfig
from worldmodel.config import LearnerConfig, WorldModelConfig


class ConfigError(ValueError):
    """A config file or override that cannot be turned into a `Config`."""


@dataclass
class RunConfig:
    """Options of one run of the loop."""

    steps: int = 2800  # agent steps (decisions) in total, a resumed run's too; each is env.action_repeat env steps
    seed: int = 0
    device: str = "cpu"  # "cpu" or "cuda"
    out: str | None = None  # run folder; None means runs/<timestamp>
    seed_steps: int = 500  # uniformly random actions before the first plan, to fill the memory
    warmup_updates: int = 250  # learner steps taken at once when the seed phase ends
    checkpoint_every: int = 10  # episodes between checkpoints (one is always written at the end)
    record_episodes: bool = True
    record_flush_every: int = 1  # steps between flushes of the episode file: a kill -9 loses at most these
    record_queue_steps: int = 256  # steps waiting for the writer thread; beyond, a step is dropped and counted
    video: bool = True  # an MP4 of the last episode: camera beside imagination
    torch_threads: int = 0  # 0 leaves torch's default


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    worldmodel: WorldModelConfig = field(default_factory=WorldModelConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    deliberation: DeliberationConfig = field(default_factory=DeliberationConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)  # where reward comes from on a robot
    bridge: BridgeConfig = field(default_factory=BridgeConfig)  # how `omniloop robot` reaches the robot


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML file (or the defaults when `path` is None) and apply `key=value` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top, not {type(loaded).__name__}")
        data = loaded or {}
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(data, key, value)
    cfg = from_dict(Config, data)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Refuse values that have the right type but cannot work, naming the field."""
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    run, wm, moe = cfg.run, cfg.worldmodel, cfg.worldmodel.moe
    need(run.device in ("cpu", "cuda") or run.device.startswith("cuda:"),
         f"run.device must be cpu, cuda or cuda:N, got {run.device!r}")
    need(run.steps >= 1, f"run.steps must be at least 1, got {run.steps}")
    need(run.seed_steps >= 0, f"run.seed_steps must be >= 0, got {run.seed_steps}")
    need(run.warmup_updates >= 0, f"run.warmup_updates must be >= 0, got {run.warmup_updates}")
    need(run.checkpoint_every >= 1, f"run.checkpoint_every must be at least 1 episode, got {run.checkpoint_every}")
    need(run.record_flush_every >= 1, f"run.record_flush_every must be at least 1 step, got {run.record_flush_every}")
    need(run.record_queue_steps >= 1, f"run.record_queue_steps must be at least 1 step, got {run.record_queue_steps}")
    name = cfg.env.name
    need(name in ("reach", "omniloop/Reach-v0") or name.startswith(("gym:", "dmc:")),
         f"env.name {name!r} is none of: reach, gym:ID, dmc:DOMAIN-TASK")
    need(cfg.env.frame_stack >= 1, f"env.frame_stack must be at least 1, got {cfg.env.frame_stack}")
    need(cfg.env.frame_stack == 1 or cfg.env.pixels,
         "env.frame_stack > 1 stacks camera frames: it needs env.pixels=true")
    need(cfg.env.proprio or cfg.env.pixels,
         "env.proprio=false with env.pixels=false would leave the agent nothing to see")
    need(cfg.env.action_repeat in (0, 1) or name not in ("reach", "omniloop/Reach-v0"),
         f"env.action_repeat must be 0 or 1 on reach (it steps at its own 20 Hz), got {cfg.env.action_repeat}")
    need(cfg.learner.snapshot_every >= 1, f"learner.snapshot_every must be at least 1, got {cfg.learner.snapshot_every}")
    grid_factor = cfg.env.image_size // wm.image_grid
    need(cfg.env.image_size % wm.image_grid == 0 and grid_factor >= 4 and grid_factor & (grid_factor - 1) == 0,
         f"env.image_size {cfg.env.image_size} must be worldmodel.image_grid ({wm.image_grid}) times a power of two >= 4")
    need(wm.latent_dim % wm.simnorm_dim == 0,
         f"worldmodel.latent_dim {wm.latent_dim} must be a multiple of worldmodel.simnorm_dim {wm.simnorm_dim}")
    need(wm.d_model % wm.n_heads == 0, f"worldmodel.d_model {wm.d_model} must be a multiple of worldmodel.n_heads {wm.n_heads}")
    need(1 <= moe.top_k <= moe.num_experts,
         f"worldmodel.moe.top_k must be in [1, worldmodel.moe.num_experts={moe.num_experts}], got {moe.top_k}")
    need(cfg.learner.batch_size >= 1 and cfg.learner.horizon >= 1, "learner.batch_size and learner.horizon must be >= 1")
    need(1 <= cfg.learner.td_steps <= cfg.learner.horizon,
         f"learner.td_steps must be in [1, learner.horizon={cfg.learner.horizon}], got {cfg.learner.td_steps}")
    need(cfg.learner.updates_per_step >= 0, f"learner.updates_per_step must be >= 0, got {cfg.learner.updates_per_step}")
    need(wm.num_q >= 2, f"worldmodel.num_q must be at least 2 (targets take the lower of 2 heads), got {wm.num_q}")
    need(0 <= wm.value_heads <= wm.num_q,
         f"worldmodel.value_heads must be in [0, worldmodel.num_q={wm.num_q}] (0: all heads), got {wm.value_heads}")
    need(cfg.learner.reconstruct_samples >= 1,
         f"learner.reconstruct_samples must be at least 1, got {cfg.learner.reconstruct_samples}")
    need(cfg.planner.horizon >= 1 and cfg.planner.iterations >= 1, "planner.horizon and planner.iterations must be >= 1")
    need(cfg.planner.temperature > 0, f"planner.temperature must be > 0, got {cfg.planner.temperature}")
    need(0 < cfg.planner.min_std <= cfg.planner.max_std,
         f"planner.min_std and max_std must satisfy 0 < min_std <= max_std, got {cfg.planner.min_std} and {cfg.planner.max_std}")
    need(cfg.planner.discount == cfg.learner.discount,
         f"planner.discount ({cfg.planner.discount}) must equal learner.discount ({cfg.learner.discount}): the value "
         "that closes each imagined horizon was trained with the learner's")
    need(1 <= cfg.planner.elites <= cfg.planner.samples,
         f"planner.elites must be in [1, planner.samples={cfg.planner.samples}], got {cfg.planner.elites}")
    need(0.0 <= cfg.planner.policy_fraction < 1.0,
         f"planner.policy_fraction must be in [0, 1), got {cfg.planner.policy_fraction}")
    need(cfg.deliberation.promise_window >= 0,
         f"deliberation.promise_window must be >= 0 steps (0 turns the check off), got {cfg.deliberation.promise_window}")
    need(cfg.deliberation.promise_tolerance > 0,
         f"deliberation.promise_tolerance must be > 0, got {cfg.deliberation.promise_tolerance}")
    for section in (cfg.objective, cfg.bridge):
        try:
            section.validate()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    need(cfg.memory.capacity > cfg.learner.horizon,
         f"memory.capacity must exceed learner.horizon ({cfg.learner.horizon}), got {cfg.memory.capacity}")


def parse_override(item: str) -> tuple[str, Any]:
    """`planner.horizon=5` -> ("planner.horizon", 5); the value is read as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has no key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {key}: {part} is a value, not a section")
        node = child
    node[parts[-1]] = value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from `data`, checking every key and every value's type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} (known keys here: {known})")
    kwargs = {name: _coerce(hints[name], value, f"{prefix}{name}") for name, value in data.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, path + ".")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{path}: bad value {value!r}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {value!r}")
        return dict(value)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise ConfigError(f"{path}: unsupported field type {tp}")
    raise ConfigError(f"{path} must be {tp.__name__}, got {value!r} ({type(value).__name__})")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the config as YAML, atomically: a run's config.yaml is never half written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    os.replace(tmp, path)


def flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as {dotted key: leaf value}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def changed_fields(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The dotted keys both config dicts have whose values differ. A key only one has is a field added
    or removed between two versions of the code, not a change of the run's config."""
    a, b = flat(before), flat(after)
    return sorted(key for key in a.keys() & b.keys() if a[key] != b[key])
