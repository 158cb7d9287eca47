"""Is sparsity a free parameter for our world model? A dense world model against MoE world models with
E experts (top-k routing), all with the same active parameters per token, trained on the same fixed
set of recorded episodes, measured on held-out episodes.

    python benchmarks/dmc.py --task reacher-easy --steps 20000     # records episodes, if you have none
    python benchmarks/moe_vs_dense.py --episodes runs/bench/episodes       # the reach benchmark's 400 episodes
    python benchmarks/moe_vs_dense.py --episodes DIR --experts 4,8,16 --steps 3000 --device cuda

Each model learns what the world model learns online (latent consistency along an H-step rollout,
two-hot reward) plus one more head, trained with it: a linear readout of the observation from each
predicted latent. The held-out prediction loss is that readout's squared error on the normalized
observations of t+1..t+H, predicted from o_t and the actions alone: the same units for every model,
whatever its latent. The dense model trains --dense-factor times longer, so it can show how many steps it needs
to match each MoE model.

Reports, per MoE model: the compute multiplier (dense steps to reach the MoE model's final held-out
loss, divided by the MoE model's steps; ">" when dense never got there) and its wall time per step
relative to dense. Writes curves.csv, moe_vs_dense.png (loss against steps and against wall time)
and summary.csv into --out, with dataset.npz: the episodes' observations, actions and rewards, which
--episodes also takes.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from agent.config import load_config
from agent.episodes import EpisodeError, read_episode
from worldmodel.model import WorldModel

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "dmc.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=Path, required=True,
                   help="folder of recorded episodes (.mcap) with a proprio observation, or a dataset.npz this benchmark saved")
    p.add_argument("--experts", default="4,8,16", help="MoE expert counts to compare with dense")
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--steps", type=int, default=3000, help="training steps of each MoE model")
    p.add_argument("--dense-factor", type=float, default=3.0, help="the dense model trains this many times longer")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--horizon", type=int, default=5, help="predicted steps per sequence")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--held-out", type=float, default=0.2, help="share of episodes kept for evaluation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("runs") / "moe_vs_dense")
    p.add_argument("--config", type=Path, default=CONFIG, help="its worldmodel section sizes the models")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------- data


@dataclasses.dataclass
class Episodes:
    obs: list[np.ndarray]  # per episode (T, P) float32
    action: list[np.ndarray]  # (T, A)
    reward: list[np.ndarray]  # (T,)


def load_episodes(source: Path) -> Episodes:
    """A folder of .mcap episodes, or the dataset.npz an earlier run of this benchmark saved."""
    if source.suffix == ".npz":
        data = np.load(source)
        ends = np.cumsum(data["lengths"])[:-1]
        return Episodes(*(np.split(data[k], ends) for k in ("obs", "action", "reward")))
    paths = sorted(source.glob("*.mcap"))
    if not paths:
        raise SystemExit(f"no .mcap episodes in {source}")
    out = Episodes([], [], [])
    for path in paths:
        try:
            ep = read_episode(path)
        except EpisodeError as exc:
            print(f"skipping {path.name}: {exc}")
            continue
        steps = [s for s in ep.steps if s.action_requested is not None and s.reward is not None]
        if len(steps) < 2:
            continue
        if "proprio" not in steps[0].observation:
            raise SystemExit(f"{path}: this benchmark reads state episodes (a 'proprio' observation)")
        out.obs.append(np.stack([s.observation["proprio"] for s in steps]).astype(np.float32))
        out.action.append(np.stack([s.action_requested for s in steps]).astype(np.float32))
        out.reward.append(np.array([s.reward for s in steps], dtype=np.float32))
    return out


def save_episodes(eps: Episodes, path: Path) -> None:
    """The observations, actions and rewards alone: small, and quick to load again (--episodes X.npz)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, obs=np.concatenate(eps.obs), action=np.concatenate(eps.action),
                        reward=np.concatenate(eps.reward), lengths=np.array([len(o) for o in eps.obs]))


class Sequences:
    """All (H+1)-observation windows inside the given episodes, as tensors on one device."""

    def __init__(self, eps: Episodes, idx: list[int], horizon: int, mean: np.ndarray, std: np.ndarray,
                 device: torch.device):
        obs, act, rew = [], [], []
        for i in idx:
            o, a, r = eps.obs[i], eps.action[i], eps.reward[i]
            for t in range(len(o) - horizon):
                obs.append(o[t : t + horizon + 1])
                act.append(a[t : t + horizon])
                rew.append(r[t : t + horizon])
        if not obs:
            raise SystemExit(f"no episode is longer than the horizon {horizon}")
        self.obs = torch.as_tensor(np.stack(obs), device=device)  # (N, H+1, P) raw
        self.target = (self.obs - torch.as_tensor(mean, device=device)) / torch.as_tensor(std, device=device)
        self.action = torch.as_tensor(np.stack(act), device=device)
        self.reward = torch.as_tensor(np.stack(rew), device=device)

    def __len__(self) -> int:
        return len(self.obs)


# ------------------------------------------------------------------------------------- models


class Predictor(torch.nn.Module):
    """A world model plus a linear readout from each latent back to the observation, trained with it."""

    def __init__(self, model: WorldModel, obs_dim: int):
        super().__init__()
        self.model = model
        self.readout = torch.nn.Linear(model.cfg.latent_dim, obs_dim)

    def losses(self, seq: Sequences, idx: torch.Tensor, rho: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> training loss, and the readout's and the reward's mean squared errors (all scalars)."""
        m = self.model
        obs, act, rew, target = seq.obs[idx], seq.action[idx], seq.reward[idx], seq.target[idx]
        b, h = act.shape[:2]
        m.reset_router_stats()
        with torch.no_grad():
            z_next = m.encode({"proprio": obs[:, 1:].reshape(b * h, -1)}).reshape(b, h, -1)
        z = m.encode({"proprio": obs[:, 0]})
        zs, reward_logits = [], []
        for t in range(h):
            reward_logits.append(m.reward_logits(z, act[:, t]))
            z = m.step(z, act[:, t])
            zs.append(z)
        z_pred = torch.stack(zs, 1)
        logits = torch.stack(reward_logits, 1)
        decay = rho ** torch.arange(h, device=z.device, dtype=torch.float32)
        readout_err = (self.readout(z_pred) - target[:, 1:]).pow(2).mean(-1)  # (B, H)
        consistency = (z_pred - z_next).pow(2).mean(-1)
        reward_ce = m.scalar_loss(logits, rew)
        loss = ((20 * consistency + 0.1 * reward_ce + readout_err) * decay).mean() + m.cfg.moe.balance_coef * m.balance_loss()
        reward_err = (m.scalar(logits.detach()) - rew).pow(2).mean()
        return loss, readout_err.detach().mean(), reward_err


def build(args: argparse.Namespace, obs_dim: int, action_dim: int, experts: int | None) -> Predictor:
    """experts=None: the dense twin. Every model starts from the same seed."""
    cfg = load_config(args.config, args.overrides).worldmodel
    moe = dataclasses.replace(cfg.moe, dense=experts is None, num_experts=experts or cfg.moe.num_experts,
                              top_k=args.top_k)
    cfg = dataclasses.replace(cfg, moe=moe)
    torch.manual_seed(args.seed)
    model = WorldModel({"proprio": (obs_dim,)}, action_dim, cfg)
    return Predictor(model, obs_dim).to(args.device)


def ffn_parameters(p: Predictor) -> tuple[int, int]:
    """Total and active-per-token parameters of the feed-forward (expert) layers."""
    total = active = 0
    for name, param in p.named_parameters():
        if ".ffn" in name or ".ffns." in name:
            n = param.numel()
            total += n
            if "router" in name:
                active += n
            elif param.dim() >= 2 and name.endswith(("w1", "w2", "b1", "b2")):  # MoE: (E, ...) expert weights
                active += n // param.shape[0] * p.model.cfg.moe.top_k
            else:
                active += n
    return total, active


# -------------------------------------------------------------------------------------- training


@torch.no_grad()
def held_out_loss(p: Predictor, seq: Sequences, batch: int) -> tuple[float, float]:
    p.eval()
    readout, reward, n = 0.0, 0.0, len(seq)
    for start in range(0, n, batch):
        idx = torch.arange(start, min(n, start + batch), device=seq.obs.device)
        _, pe, re = p.losses(seq, idx)
        readout += float(pe) * len(idx)
        reward += float(re) * len(idx)
    p.train()
    return readout / n, reward / n


def train(p: Predictor, name: str, steps: int, train_seq: Sequences, test_seq: Sequences,
          args: argparse.Namespace, progress: Progress) -> list[dict]:
    opt = torch.optim.Adam(p.parameters(), lr=3e-4)
    gen = torch.Generator(device=train_seq.obs.device).manual_seed(args.seed)
    rows, wall = [], 0.0
    task = progress.add_task(name, total=steps)
    for step in range(1, steps + 1):
        start = time.perf_counter()
        idx = torch.randint(len(train_seq), (args.batch,), device=train_seq.obs.device, generator=gen)
        loss, _, _ = p.losses(train_seq, idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(p.parameters(), 20.0)
        opt.step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        wall += time.perf_counter() - start
        if step % args.eval_every == 0 or step == steps:
            readout, reward = held_out_loss(p, test_seq, 1024)
            rows.append({"model": name, "step": step, "wall_s": wall, "held_out_loss": readout, "held_out_reward_mse": reward,
                         **{k: v for k, v in p.model.router_stats().items() if k in ("moe_max_load", "moe_entropy")}})
        progress.update(task, advance=1)
    return rows


def write_curves(rows: list[dict], path: Path) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def smoothed(rows: list[dict], window: int = 3) -> list[tuple[int, float]]:
    losses = [r["held_out_loss"] for r in rows]
    return [(r["step"], float(np.mean(losses[max(0, i - window + 1) : i + 1]))) for i, r in enumerate(rows)]


def multiplier(dense: list[dict], moe: list[dict]) -> tuple[float, bool]:
    """(dense steps to reach the MoE model's final loss) / (MoE steps); False if dense never did. The
    step where dense reaches it is interpolated linearly between the two evaluations around it: the
    first evaluation at or below it would round the multiplier up by up to one evaluation interval."""
    target = smoothed(moe)[-1][1]
    moe_steps = moe[-1]["step"]
    before: tuple[int, float] | None = None
    for step, loss in smoothed(dense):
        if loss <= target:
            if before is None:
                return step / moe_steps, True
            start, above = before
            return (start + (step - start) * (above - target) / (above - loss)) / moe_steps, True
        before = (step, loss)
    return dense[-1]["step"] / moe_steps, False


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), tight_layout=True)
    for i, (x, label) in enumerate((("step", "training steps"), ("wall_s", "training wall time (s)"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for name in dict.fromkeys(r["model"] for r in rows):
            mine = [r for r in rows if r["model"] == name]
            ax.plot([r[x] for r in mine], [s for _, s in smoothed(mine)], label=name, lw=2 if name == "dense" else 1.3)
        ax.set_xlabel(label)
        ax.set_ylabel("held-out prediction loss (normalized obs MSE)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("World model: dense against MoE at equal active parameters per token")
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    eps = load_episodes(args.episodes)
    if args.episodes.suffix != ".npz":
        save_episodes(eps, args.out / "dataset.npz")
    n = len(eps.obs)
    n_test = max(1, round(n * args.held_out))
    if n - n_test < 1:
        raise SystemExit(f"{n} episode(s) cannot be split into training and held-out sets")
    order = np.random.default_rng(args.seed).permutation(n).tolist()
    train_idx, test_idx = order[n_test:], order[:n_test]
    stacked = np.concatenate([eps.obs[i] for i in train_idx])
    mean, std = stacked.mean(0), stacked.std(0) + 1e-3
    device = torch.device(args.device)
    train_seq = Sequences(eps, train_idx, args.horizon, mean, std, device)
    test_seq = Sequences(eps, test_idx, args.horizon, mean, std, device)
    obs_dim, action_dim = eps.obs[0].shape[1], eps.action[0].shape[1]
    print(f"{n} episodes: {len(train_seq)} training and {len(test_seq)} held-out sequences of {args.horizon} steps")

    experts = [int(e) for e in args.experts.split(",")]
    models = [("dense", None, round(args.steps * args.dense_factor))] + [(f"MoE E={e}", e, args.steps) for e in experts]
    rows: list[dict] = []
    sizes = {}
    args.out.mkdir(parents=True, exist_ok=True)
    with Progress() as progress:
        for name, e, steps in models:
            p = build(args, obs_dim, action_dim, e)
            sizes[name] = ffn_parameters(p)
            mine = train(p, name, steps, train_seq, test_seq, args, progress)
            rows += mine
            write_curves(rows, args.out / "curves.csv")  # after each model: a stopped run keeps what it did
            progress.console.print(f"{name}: held-out loss {smoothed(mine)[-1][1]:.4f} after {steps} steps, "
                                   f"{1e3 * mine[-1]['wall_s'] / steps:.1f} ms/step")
    plot(rows, args.out / "moe_vs_dense.png")

    dense = [r for r in rows if r["model"] == "dense"]
    dense_step_s = dense[-1]["wall_s"] / dense[-1]["step"]
    summary = []
    for name, e, steps in models[1:]:
        mine = [r for r in rows if r["model"] == name]
        mult, reached = multiplier(dense, mine)
        summary.append({"model": name, "experts": e, "ffn_params": sizes[name][0], "ffn_active_params": sizes[name][1],
                        "final_loss": smoothed(mine)[-1][1], "dense_loss_same_steps": smoothed([r for r in dense if r["step"] <= steps])[-1][1],
                        "multiplier": mult, "dense_reached": reached,
                        "wall_per_step_vs_dense": (mine[-1]["wall_s"] / mine[-1]["step"]) / dense_step_s})
    with open(args.out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)

    d_total, d_active = sizes["dense"]
    print(f"\ndense: FFN parameters {d_total} (all active), final held-out loss {smoothed(dense)[-1][1]:.4f} "
          f"after {dense[-1]['step']} steps, {1e3 * dense_step_s:.1f} ms/step")
    print("\n| model | FFN params (active) | held-out loss | dense at same steps | compute multiplier | wall/step vs dense |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for s in summary:
        mult = f"{s['multiplier']:.2f}x" if s["dense_reached"] else f"> {s['multiplier']:.2f}x"
        print(f"| {s['model']} | {s['ffn_params']} ({s['ffn_active_params']}) | {s['final_loss']:.4f} | "
              f"{s['dense_loss_same_steps']:.4f} | {mult} | {s['wall_per_step_vs_dense']:.2f}x |")
    print(f"\nwrote {args.out / 'curves.csv'}, {args.out / 'summary.csv'} and {args.out / 'moe_vs_dense.png'}")


if __name__ == "__main__":
    main()
