"""The world model, top to bottom: System 1.

    observation --tokenizers--> tokens --MoE transformer--> z          encode(obs)
    (z, a) --action token + MoE residual blocks--> z'                   step(z, a)
    (z, a) --MLP--> reward;  (z, a) --ensemble of MLPs--> Q            reward / q / value
    z --MLP--> squashed Gaussian over actions                           policy(z)
    z --transposed convs--> image (the newest frame, if frames are stacked) decode(z)

Reward and Q heads predict two-hot logits over bins in symlog space (worldmodel.twohot), so one
set of loss weights serves tasks whose returns differ by orders of magnitude; with `twohot=False`
they predict the scalar itself, trained with a squared error.

z is a SimNorm latent (TD-MPC2): `latent_dim` numbers in groups of `simnorm_dim`, each group a
softmax. It keeps the latent bounded, so long imagined rollouts cannot blow up.

Every method keeps the batch dimension first and untouched, so a planner can push hundreds of
candidate futures through as one batch. Shapes: B batch, Z latent_dim, A action_dim, Q num_q.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from worldmodel.config import WorldModelConfig
from worldmodel.moe import balance_loss, make_ffn, reset_router_stats, router_summary
from worldmodel.tokenizers import AudioTokenizer, ImageTokenizer, TextTokenizer, VectorTokenizer
from worldmodel.twohot import TwoHot

ObsSpec = Mapping[str, tuple[int, ...]]  # observation key -> shape of one observation


class SimNorm(nn.Module):
    def __init__(self, group: int):
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Written out on 2-D rows: torch's softmax over rows of 8 is ~3x slower on a CPU than this.
        g = x.reshape(-1, self.group)
        e = torch.exp(g - g.amax(-1, keepdim=True))
        return (e / e.sum(-1, keepdim=True)).reshape(x.shape)


def mlp(d_in: int, hidden: int, d_out: int, zero_last: bool = False) -> nn.Sequential:
    # SiLU where TD-MPC2 has Mish: as smooth, and ~9x cheaper on a CPU (../shared/facts.md).
    net = nn.Sequential(
        nn.Linear(d_in, hidden), nn.LayerNorm(hidden), nn.SiLU(),
        nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.SiLU(),
        nn.Linear(hidden, d_out),
    )
    if zero_last:  # uniform logits: the head starts out predicting symexp(mean bin), 0 for a symmetric range
        nn.init.zeros_(net[-1].weight)
        nn.init.zeros_(net[-1].bias)
    return net


class Block(nn.Module):
    """Pre-norm transformer block whose feed-forward layer is a Mixture of Experts."""

    def __init__(self, cfg: WorldModelConfig):
        super().__init__()
        d = cfg.d_model
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, cfg.n_heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.ffn = make_ffn(d, cfg.moe)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, key_padding_mask=pad, need_weights=False)[0]
        return x + self.ffn(self.ln2(x))


class Encoder(nn.Module):
    """Multimodal tokens -> one latent state, read from a learned summary token."""

    MODALITIES = ("image", "proprio", "audio", "instruction")

    def __init__(self, spec: ObsSpec, cfg: WorldModelConfig):
        super().__init__()
        unknown = set(spec) - set(self.MODALITIES)
        if unknown:
            raise ValueError(f"the world model has no tokenizer for observation keys {sorted(unknown)}; "
                             f"it reads {list(self.MODALITIES)}")
        d = cfg.d_model
        self.tokenizers = nn.ModuleDict()
        if "image" in spec:
            h, w, c = spec["image"]
            if h != w or c % 3:
                raise ValueError(f"image observations must be square RGB frames (S, S, 3k), got {spec['image']}")
            self.tokenizers["image"] = ImageTokenizer(h, cfg.image_grid, d, c)
        if "proprio" in spec:
            self.tokenizers["proprio"] = VectorTokenizer(spec["proprio"][0], d, normalize=True)
        if "audio" in spec:
            self.tokenizers["audio"] = AudioTokenizer(spec["audio"][0], cfg.audio, d)
        if "instruction" in spec:
            self.tokenizers["instruction"] = TextTokenizer(cfg.text_max_len, d)
        if not self.tokenizers:
            raise ValueError("the observation has none of the keys the world model reads: "
                             f"{list(self.MODALITIES)}")
        self.modality = nn.ParameterDict({k: nn.Parameter(torch.zeros(d)) for k in self.tokenizers})
        self.summary = nn.Parameter(torch.randn(d) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln = nn.LayerNorm(d)
        self.out = nn.Linear(d, cfg.latent_dim)
        self.simnorm = SimNorm(cfg.simnorm_dim)

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """obs: key -> (B, *shape) tensors -> z (B, Z)."""
        tokens, pads = [], []
        batch = next(iter(obs.values())).shape[0]
        summary = self.summary.expand(batch, 1, -1)
        tokens.append(summary)
        pads.append(torch.zeros(batch, 1, dtype=torch.bool, device=summary.device))
        for key, tokenizer in self.tokenizers.items():
            if key not in obs:
                raise KeyError(f"observation is missing {key!r}; the model was built for {list(self.tokenizers)}")
            if key == "instruction":
                tok, pad = tokenizer(obs[key])
            else:
                tok = tokenizer(obs[key])
                pad = torch.zeros(tok.shape[:2], dtype=torch.bool, device=tok.device)
            tokens.append(tok + self.modality[key])
            pads.append(pad)
        x = torch.cat(tokens, dim=1)
        pad = torch.cat(pads, dim=1)
        pad = pad if bool(pad.any()) else None
        for block in self.blocks:
            x = block(x, pad)
        return self.simnorm(self.out(self.ln(x[:, 0])))


class Dynamics(nn.Module):
    """(z, a) -> z': a latent token plus an action token, through MoE residual blocks."""

    def __init__(self, action_dim: int, cfg: WorldModelConfig):
        super().__init__()
        d = cfg.dynamics_width
        self.latent_in = nn.Linear(cfg.latent_dim, d)
        self.action_in = VectorTokenizer(action_dim, d, normalize=False)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(cfg.dynamics_layers))
        self.ffns = nn.ModuleList(make_ffn(d, cfg.moe) for _ in range(cfg.dynamics_layers))
        self.ln = nn.LayerNorm(d)
        self.out = nn.Linear(d, cfg.latent_dim)
        self.simnorm = SimNorm(cfg.simnorm_dim)

    def forward(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        x = self.latent_in(z) + self.action_in(a).squeeze(1)
        for norm, ffn in zip(self.norms, self.ffns):
            x = x + ffn(norm(x))
        return self.simnorm(self.out(F.silu(self.ln(x))))


class QEnsemble(nn.Module):
    """num_q MLPs run as one batched matmul per layer: weights (Q, in, out)."""

    def __init__(self, d_in: int, hidden: int, num_q: int, d_out: int):
        super().__init__()
        sizes = [d_in, hidden, hidden, d_out]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.norms = nn.ModuleList()
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            w = torch.empty(num_q, a, b)
            for q in range(num_q):
                nn.init.kaiming_uniform_(w[q].T, a=5**0.5)
            if i == len(sizes) - 2:
                w.zero_()  # start every Q at 0, as TD-MPC2 does, so early targets are tame
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(num_q, 1, b)))
            if i < len(sizes) - 2:
                self.norms.append(nn.LayerNorm(b))

    def forward(self, x: torch.Tensor, heads: torch.Tensor | None = None) -> torch.Tensor:
        """(B, d_in) -> (Q, B, d_out); with `heads` (indices), only those heads' outputs (len(heads), B, d_out)."""
        weights, biases = list(self.weights), list(self.biases)
        if heads is not None:  # the other heads are not computed at all
            heads = heads.to(weights[0].device)  # drawn on the CPU, where the learner's random draws are
            weights = [w.index_select(0, heads) for w in weights]
            biases = [b.index_select(0, heads) for b in biases]
        h = x.unsqueeze(0).expand(len(weights[0]), -1, -1)
        for i, (w, b) in enumerate(zip(weights, biases)):
            h = torch.baddbmm(b, h, w)
            if i < len(self.norms):
                h = F.silu(self.norms[i](h))
        return h


class Decoder(nn.Module):
    """z -> an image (B, S, S, 3) in [0, 1], so a person can see what the model imagines."""

    def __init__(self, latent_dim: int, size: int, grid: int):
        super().__init__()
        self.grid = grid
        n_ups = (size // grid).bit_length() - 1
        channels = [32] + [max(8, 32 // 2 ** (i + 1)) for i in range(n_ups - 1)] + [3]
        self.inp = nn.Linear(latent_dim, channels[0] * grid * grid)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.GELU()]
        self.net = nn.Sequential(*layers[:-1])  # the last layer emits RGB logits directly

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.inp(z).reshape(z.shape[0], -1, self.grid, self.grid)
        return torch.sigmoid(self.net(x)).permute(0, 2, 3, 1)


class WorldModel(nn.Module):
    """System 1. The planner reads it only through step / reward / value / policy (planner.interface)."""

    def __init__(self, spec: ObsSpec, action_dim: int, cfg: WorldModelConfig):
        super().__init__()
        if cfg.latent_dim % cfg.simnorm_dim:
            raise ValueError(f"worldmodel.latent_dim {cfg.latent_dim} must be a multiple of "
                             f"worldmodel.simnorm_dim {cfg.simnorm_dim}")
        if not 0 <= cfg.value_heads <= cfg.num_q:
            raise ValueError(f"worldmodel.value_heads must be in [0, worldmodel.num_q={cfg.num_q}] "
                             f"(0: all heads), got {cfg.value_heads}")
        self.cfg = cfg
        self.spec = dict(spec)
        self.action_dim = action_dim
        z, a, h = cfg.latent_dim, action_dim, cfg.head_hidden
        self.encoder = Encoder(spec, cfg)
        self.dynamics = Dynamics(action_dim, cfg)
        self.twohot = TwoHot(cfg.bins, cfg.symlog_min, cfg.symlog_max)
        out = cfg.bins if cfg.twohot else 1
        self.reward_head = mlp(z + a, h, out, zero_last=True)
        self.q_heads = QEnsemble(z + a, h, cfg.num_q, out)
        self.target_q = copy.deepcopy(self.q_heads).requires_grad_(False)
        self.policy_head = mlp(z, h, 2 * a)
        self.decoder = Decoder(z, spec["image"][0], cfg.image_grid) if "image" in spec else None

    def encode(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """obs: key -> (B, *shape) -> z (B, Z)."""
        return self.encoder(obs)

    def step(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """(B, Z), (B, A) -> next latent (B, Z)."""
        return self.dynamics(z, a)

    def reward_logits(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """(B, Z), (B, A) -> the reward head's output (B, bins): two-hot logits, or (B, 1) the scalar."""
        return self.reward_head(torch.cat([z, a], -1))

    def scalar(self, out: torch.Tensor) -> torch.Tensor:
        """A reward or Q head's output (..., bins or 1) -> the scalar it predicts (...)."""
        return self.twohot.decode(out) if self.cfg.twohot else out.squeeze(-1)

    def reward(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """(B, Z), (B, A) -> predicted reward (B,)."""
        return self.scalar(self.reward_logits(z, a))

    def q_logits(self, z: torch.Tensor, a: torch.Tensor, target: bool = False,
                 heads: torch.Tensor | None = None) -> torch.Tensor:
        """(B, Z), (B, A) -> every Q head's output (Q, B, bins), as for the reward; only `heads` if given."""
        ensemble = self.target_q if target else self.q_heads
        return ensemble(torch.cat([z, a], -1), heads)

    def q(self, z: torch.Tensor, a: torch.Tensor, target: bool = False,
          heads: torch.Tensor | None = None) -> torch.Tensor:
        """(B, Z), (B, A) -> every head's Q (Q, B), or only those of `heads` (indices)."""
        return self.scalar(self.q_logits(z, a, target, heads))

    def scalar_loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of head outputs (..., bins or 1) against scalar targets broadcast to (...)."""
        if self.cfg.twohot:
            return self.twohot.cross_entropy(out, self.twohot.encode(target))
        return (out.squeeze(-1) - target).pow(2)

    def value(self, z: torch.Tensor, a: torch.Tensor, every_head: bool = False) -> torch.Tensor:
        """(B, Z), (B, A) -> the mean Q (B,) of `value_heads` heads drawn at random, or of all of them.
        TD-MPC2 closes its planner's returns and sets its policy's objective with 2 such heads; a
        call costs value_heads / num_q of the whole ensemble's, and the draw changes with each call,
        so only values from one call compare without that noise. `every_head` reads them all."""
        n = 0 if every_head else self.cfg.value_heads
        heads = torch.randperm(self.cfg.num_q)[:n] if 0 < n < self.cfg.num_q else None
        return self.q(z, a, heads=heads).mean(0)

    def uncertainty(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """(B, Z), (B, A) -> disagreement of the Q ensemble, std / (|mean| + 1) (B,)."""
        q = self.q(z, a)
        return q.std(0) / (q.mean(0).abs() + 1.0)

    def policy_distribution(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (B, Z) -> mean and log-std (B, A) of the pre-tanh Gaussian."""
        mean, log_std = self.policy_head(z).chunk(2, dim=-1)
        lo, hi = self.cfg.log_std_min, self.cfg.log_std_max
        return mean, lo + 0.5 * (hi - lo) * (torch.tanh(log_std) + 1)

    def policy(self, z: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """z (B, Z) -> System 1's action (B, A) in [-1, 1]."""
        mean, log_std = self.policy_distribution(z)
        if deterministic:
            return torch.tanh(mean)
        return torch.tanh(mean + log_std.exp() * torch.randn_like(mean))

    def policy_sample(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (B, Z) -> a reparameterized action (B, A) and its entropy estimate (B,)."""
        mean, log_std = self.policy_distribution(z)
        eps = torch.randn_like(mean)
        pre = mean + log_std.exp() * eps
        action = torch.tanh(pre)
        log_prob = (-0.5 * eps.pow(2) - log_std - 0.5 * torch.log(torch.tensor(2 * torch.pi))).sum(-1)
        log_prob = log_prob - torch.log(1 - action.pow(2) + 1e-6).sum(-1)  # tanh's change of volume
        return action, -log_prob

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, Z) -> image (B, S, S, 3) in [0, 1]."""
        if self.decoder is None:
            raise RuntimeError("this world model has no image decoder: its observations have no image")
        return self.decoder(z)

    @torch.no_grad()
    def fit_input_statistics(self, obs: Mapping[str, torch.Tensor]) -> None:
        """Fit the input normalization of vector observations on a sample (key -> (N, *shape))."""
        if "proprio" in self.encoder.tokenizers and "proprio" in obs:
            self.encoder.tokenizers["proprio"].fit(obs["proprio"])

    def balance_loss(self) -> torch.Tensor:
        """The MoE load-balancing loss of every routing call since `reset_router_stats`."""
        return balance_loss(self)

    def reset_router_stats(self) -> None:
        reset_router_stats(self)

    def router_stats(self) -> dict[str, float]:
        """Expert load balance, router entropy and dropped tokens of the last forward pass."""
        return router_summary(self)

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        for p, tp in zip(self.q_heads.parameters(), self.target_q.parameters()):
            tp.lerp_(p, tau)
