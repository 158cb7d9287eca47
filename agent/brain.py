"""The agent's mind, assembled: System 1 (world model), System 2 (deliberation over MPPI), the memory
and the learner, with the few operations the loop needs and the state a checkpoint keeps.

Observations cross in as numpy dicts (one step) and leave as torch tensors on the brain's device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from agent.checkpoint import optimizer_from_tensors, optimizer_to_tensors
from agent.config import Config, ConfigError
from agent.memory import Memory
from planner.deliberation import Deliberation
from planner.mppi import MPPI, PlanTrace
from worldmodel.learner import Batch, Learner, surprise
from worldmodel.model import WorldModel
from worldmodel.tokenizers import encode_text

TypedSpec = dict[str, tuple[tuple[int, ...], str]]  # key -> (shape, dtype name), from sim.observation_spec


@dataclass
class Step:
    """What the brain decided for one observation."""

    action: np.ndarray  # (A,) float32 in [-1, 1]
    trace: PlanTrace | None  # None for the random actions of the seed phase
    expected_latent: torch.Tensor  # (Z,)
    expected_reward: float


class Brain:
    def __init__(self, cfg: Config, spec: TypedSpec, action_dim: int):
        self.cfg = cfg
        self.device = torch.device(cfg.run.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("run.device is 'cuda' but torch sees no CUDA device (a CPU build?); use --device cpu")
        self.text_len = cfg.worldmodel.text_max_len
        spec = {k: ((self.text_len,), "uint8") if k == "instruction" else v for k, v in spec.items()}
        self.spec = spec
        self.action_dim = action_dim
        self.model = WorldModel({k: s for k, (s, _) in spec.items()}, action_dim, cfg.worldmodel).to(self.device)
        self.learner = Learner(self.model, cfg.learner)
        self.plan_rng = torch.Generator(self.device).manual_seed(cfg.run.seed)
        self.deliberation = Deliberation(cfg.deliberation, MPPI(cfg.planner, action_dim, self.plan_rng),
                                        value_discount=cfg.learner.discount)
        self.memory = Memory(cfg.memory, spec, action_dim, cfg.learner.horizon, cfg.run.seed)
        self.rng = np.random.default_rng(cfg.run.seed)
        self.update_credit = 0.0
        self.inputs_fitted = False  # the input normalization is fitted on the first data learned from

    # -- observe / act ---------------------------------------------------------------------------
    def prepare(self, obs: dict) -> dict[str, np.ndarray]:
        """An env observation -> arrays the memory and the model take (text becomes bytes)."""
        out = {k: v for k, v in obs.items() if k in self.spec}
        if "instruction" in self.spec:
            out["instruction"] = encode_text(str(obs.get("instruction", "")), self.text_len)
        return out

    def tensors(self, arrays: dict[str, np.ndarray], batch_dims: int = 0) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in arrays.items():
            t = torch.as_tensor(v, device=self.device)
            out[k] = t.unsqueeze(0) if batch_dims == 0 else t
        return out

    @torch.no_grad()
    def encode(self, arrays: dict[str, np.ndarray]) -> torch.Tensor:
        """One observation -> z (Z,)."""
        return self.model.encode(self.tensors(arrays))[0]

    @torch.no_grad()
    def act(self, z: torch.Tensor, explore: bool, random: bool = False) -> Step:
        """Choose the action for latent z (Z,): uniformly at random, or by deliberation."""
        if random:
            action = torch.as_tensor(self.rng.uniform(-1, 1, self.action_dim), dtype=torch.float32,
                                     device=self.device)
            z1 = self.model.step(z[None], action[None])[0]
            r = float(self.model.reward(z[None], action[None])[0])
            return Step(action.cpu().numpy(), None, z1, r)
        action, trace = self.deliberation.decide(self.model, z, explore)
        return Step(action.cpu().numpy().astype(np.float32), trace, trace.expected_latent, trace.expected_reward)

    @torch.no_grad()
    def surprise(self, step: Step, z_next: torch.Tensor, reward: float) -> dict[str, float]:
        rewards = torch.tensor([step.expected_reward, reward], device=z_next.device)
        parts = surprise(step.expected_latent[None], z_next[None], rewards[:1], rewards[1:])
        return {k: float(v[0]) for k, v in parts.items()}

    @torch.no_grad()
    def imagine_frame(self, z: torch.Tensor) -> np.ndarray | None:
        """A latent (Z,) -> the (S, S, 3) uint8 image the model pictures for it, if it has a decoder."""
        if self.model.decoder is None:
            return None
        return (self.model.decode(z[None])[0].clamp(0, 1) * 255).round().byte().cpu().numpy()

    # -- update ----------------------------------------------------------------------------------
    def updates_due(self, relative_surprise: float) -> int:
        """Learner steps to take after this env step: the steady rate, plus more after a surprise."""
        cfg = self.cfg.learner
        self.update_credit += cfg.updates_per_step
        n = math.floor(self.update_credit)
        self.update_credit -= n
        if relative_surprise > cfg.surprise_threshold:
            n += cfg.surprise_extra_updates
        return n

    def fit_input_statistics(self) -> None:
        """Fit the model's input normalization on everything in memory."""
        n = len(self.memory)
        self.model.fit_input_statistics({k: torch.as_tensor(v[:n], device=self.device)
                                         for k, v in self.memory.obs.items() if k == "proprio"})
        self.inputs_fitted = True

    def learn(self, n: int) -> list[dict[str, float]]:
        """n learner steps on prioritized batches; returns each step's scalar metrics.
        The first call fits the input normalization on the memory (which then holds >= 2 steps)."""
        if not self.memory.n_sequences:
            return []
        if not self.inputs_fitted:
            self.fit_input_statistics()
        results = []
        for _ in range(n):
            arrays, starts = self.memory.sample(self.cfg.learner.batch_size)
            batch = Batch(
                obs=self.tensors(arrays["obs"], batch_dims=2),
                action=torch.as_tensor(arrays["action"], device=self.device),
                reward=torch.as_tensor(arrays["reward"], device=self.device),
                terminated=torch.as_tensor(arrays["terminated"], device=self.device),
                weight=torch.as_tensor(arrays["weight"], device=self.device),
            )
            metrics = self.learner.update(batch)
            priority = metrics.pop("priority")
            if priority is not None:  # None: the update was refused, and the samples keep their priority
                self.memory.update_priorities(starts, np.asarray(priority.cpu(), dtype=np.float64))
            results.append({k: float(v) for k, v in metrics.items()})
        return results

    # -- checkpoint ------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor | np.ndarray], dict]:
        tensors: dict[str, torch.Tensor | np.ndarray] = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        meta: dict = {}
        for name, opt in (("optim", self.learner.optim), ("pi_optim", self.learner.pi_optim)):
            t, m = optimizer_to_tensors(opt, prefix=name)
            tensors.update(t)
            meta[name] = m
        arrays, counters = self.memory.state()
        tensors.update({f"memory.{k}": v for k, v in arrays.items()})
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.plan"] = self.plan_rng.get_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        meta.update(
            memory=counters, memory_rng=self.memory.rng.bit_generator.state, rng=self.rng.bit_generator.state,
            learner={"updates": self.learner.updates, "skipped": self.learner.skipped,
                     "restored": self.learner.restored, "q_scale": self.learner.q_scale},
            deliberation={"surprise_mean": self.deliberation.surprise_mean,
                          "uncertainty_mean": self.deliberation.uncertainty_mean,
                          "agreement": self.deliberation.agreement},
            update_credit=self.update_credit, inputs_fitted=self.inputs_fitted,
        )
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict, same_run: bool = True,
                   with_memory: bool = True) -> None:
        """Put a checkpoint's brain back. `same_run` (a resume) also restores the random streams; a new run
        started from it (--init) keeps its own seed's streams and its own config's learning rates.
        Without `with_memory` the memory stays as it is (`omniloop train --init` fills it from episodes)."""
        model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        self.model.load_state_dict(model_state)
        optimizers = {"optim": self.learner.optim, "pi_optim": self.learner.pi_optim}
        rates = {name: [group["lr"] for group in opt.param_groups] for name, opt in optimizers.items()}
        for name, opt in optimizers.items():
            optimizer_from_tensors(opt, tensors, meta[name], prefix=name)
            if not same_run:
                for group, lr in zip(opt.param_groups, rates[name]):
                    group["lr"] = lr
        if with_memory:
            arrays = {k[len("memory."):]: v.numpy() for k, v in tensors.items() if k.startswith("memory.")}
            self.memory.load_state(arrays, meta["memory"])
        if same_run:
            self.memory.rng.bit_generator.state = meta["memory_rng"]
            self.rng.bit_generator.state = meta["rng"]
            torch.set_rng_state(tensors["rng.torch"])
            self.plan_rng.set_state(tensors["rng.plan"])
            if self.device.type == "cuda" and "rng.cuda" in tensors:
                torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        self.learner.updates = meta["learner"]["updates"]
        self.learner.skipped = meta["learner"]["skipped"]
        self.learner.restored = meta["learner"].get("restored", 0)  # absent from checkpoints before it was counted
        self.learner.q_scale = meta["learner"]["q_scale"]
        self.deliberation.surprise_mean = meta["deliberation"]["surprise_mean"]
        self.deliberation.uncertainty_mean = meta["deliberation"]["uncertainty_mean"]
        self.deliberation.agreement = meta["deliberation"].get("agreement")  # absent from checkpoints before it was saved
        self.update_credit = meta["update_credit"]
        self.inputs_fitted = meta["inputs_fitted"]
