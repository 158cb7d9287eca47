"""Options of the world model and its learner."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class MoEConfig:
    dense: bool = False  # True: one dense MLP with the same active parameters per token (hidden * top_k)
    num_experts: int = 4
    top_k: int = 2
    expert_hidden: int = 128
    capacity_factor: float = 0.0  # 0: no expert ever drops a token; >0: each expert takes at most cf * N * k / E
    balance_coef: float = 0.01  # weight of the load-balancing loss (Switch Transformer form)


@dataclass
class AudioConfig:
    sample_rate: int = 16000
    n_fft: int = 400  # 25 ms windows
    hop: int = 200
    n_mels: int = 16


@dataclass
class WorldModelConfig:
    latent_dim: int = 128  # size of z; a multiple of simnorm_dim
    simnorm_dim: int = 8  # z is split into groups of this size, each a softmax (TD-MPC2's SimNorm)
    d_model: int = 64  # width of the encoder's tokens
    n_layers: int = 2  # transformer blocks in the encoder
    n_heads: int = 4
    image_grid: int = 4  # the image becomes image_grid x image_grid tokens
    text_max_len: int = 32  # bytes of the instruction that are read
    dynamics_width: int = 128  # width of the latent dynamics' residual stream
    dynamics_layers: int = 2  # MoE residual blocks in (z, a) -> z'
    head_hidden: int = 128  # reward, value and policy MLPs
    num_q: int = 5  # Q ensemble size
    value_heads: int = 0  # Q heads a value averages, drawn afresh per call (TD-MPC2: 2); 0: all num_q
    twohot: bool = True  # reward and Q as two-hot distributions (TD-MPC2); false: scalars with squared error
    bins: int = 101  # reward and Q are two-hot distributions over this many points ...
    symlog_min: float = -10.0  # ... spread evenly over [symlog_min, symlog_max] in symlog space
    symlog_max: float = 10.0
    log_std_min: float = -10.0
    log_std_max: float = 2.0
    moe: MoEConfig = field(default_factory=MoEConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)


@dataclass
class LearnerConfig:
    batch_size: int = 128
    horizon: int = 3  # latent rollout length of the training targets
    lr: float = 3e-4
    encoder_lr_scale: float = 1.0
    grad_clip: float = 20.0
    snapshot_every: int = 250  # updates between snapshots of good weights (restored after a NaN)
    rho: float = 0.5  # per-step weight decay along the rollout
    discount: float = 0.9
    td_steps: int = 1  # rewards summed before the value bootstraps (n-step TD), at most learner.horizon
    tau: float = 0.01  # target Q network's EMA rate
    consistency_coef: float = 20.0
    reward_coef: float = 0.1  # TD-MPC2's weights of the two-hot cross-entropies (scale-free across tasks)
    value_coef: float = 0.1
    reconstruction_coef: float = 1.0
    entropy_coef: float = 1e-4
    reconstruct_samples: int = 32  # images decoded per update: enough to learn the decoder, cheap on a CPU
    updates_per_step: float = 1.0  # learner steps per env step (0.5 = one update every other step)
    surprise_extra_updates: int = 1  # extra updates on a step whose surprise is surprise_threshold x the usual
    surprise_threshold: float = 2.0
