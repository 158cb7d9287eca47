"""One tokenizer per modality: each turns a batch of one kind of observation into (B, T, d) tokens.

- image   (B, H, W, 3) uint8       -> a stride-2 conv stem down to a grid x grid map: grid^2 tokens
- proprio (B, P) float32           -> normalized by fitted statistics, symlog, one linear token
- audio   (B, N) float32 at 16 kHz -> log-mel frames (STFT, mel filterbank), one token per frame
- instruction (B, L) uint8 UTF-8 bytes, 0 = padding -> one embedded token per byte
- action  (B, A) in [-1, 1]        -> one linear token (used by the latent dynamics)

Every token carries a learned embedding of its modality and position, so the encoder can tell a
proprio token from an audio frame.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from worldmodel.config import AudioConfig
from worldmodel.twohot import symlog


def encode_text(text: str, max_len: int) -> np.ndarray:
    """A string -> (max_len,) uint8 of its UTF-8 bytes, cut or zero-padded; 0 marks padding."""
    raw = text.encode("utf-8")[:max_len]
    out = np.zeros(max_len, dtype=np.uint8)
    out[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return out


class ImageTokenizer(nn.Module):
    """Non-overlapping strided convs (a 4x4 patchify, then 2x2 merges): 15x cheaper on a CPU than
    overlapping 4x4 convs of stride 2, at the same output grid."""

    CHUNK_BYTES = 16 << 20  # float pixels per matmul on a CPU: under glibc's 32 MiB mmap threshold, so reused

    def __init__(self, size: int, grid: int, d: int, channels: int = 3):
        super().__init__()
        factor = size // grid
        if size % grid or factor < 4 or factor & (factor - 1):
            raise ValueError(f"image size {size} must be the image grid {grid} times a power of two >= 4")
        strides = [4] + [2] * (int(math.log2(factor)) - 2)
        widths = [channels] + [min(d, 16 * 2**i) for i in range(len(strides))]
        layers: list[nn.Module] = []
        for c_in, c_out, s in zip(widths[:-1], widths[1:], strides):
            layers += [nn.Conv2d(c_in, c_out, s, stride=s), nn.GELU()]
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Linear(widths[-1], d)
        self.pos = nn.Parameter(torch.zeros(grid * grid, d))

    def patchify(self, image: torch.Tensor) -> torch.Tensor:
        """The first 4x4 conv of stride 4 on (B, H, W, C) uint8 pixels scaled to [-0.5, 0.5] -> (B, c, H/4, W/4).

        Written as one matmul over 4x4 patches, with the scaling folded into its weights: the
        pixels are rearranged as uint8 and turned into floats once. A conv on the scaled image
        makes four full-size float copies, half of a pixel update's time on a CPU.
        """
        conv = self.stem[0]
        _, h, w, c = image.shape
        weight = conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, 16 * c)  # (out, 4*4*C) as patches are
        bias = conv.bias - 0.5 * weight.sum(1)
        weight = weight / 255.0

        def patch_matmul(chunk: torch.Tensor) -> torch.Tensor:
            n = chunk.shape[0]
            patches = chunk.reshape(n, h // 4, 4, w // 4, 4, c).transpose(2, 3).reshape(n, h // 4, w // 4, 16 * c)
            return F.linear(patches.float(), weight, bias)  # (n, H/4, W/4, out)

        rows = len(image) if image.is_cuda else max(1, self.CHUNK_BYTES // (4 * image[0].numel()))
        out = torch.cat([patch_matmul(chunk) for chunk in image.split(rows)])
        return out.permute(0, 3, 1, 2)  # (B, out, H/4, W/4)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) uint8 -> (B, grid^2, d); C is 3, or 3k for k stacked frames."""
        x = self.stem[1:](self.patchify(image))
        return self.proj(x.flatten(2).transpose(1, 2)) + self.pos


class VectorTokenizer(nn.Module):
    """A float vector -> one token (proprio, action).

    With `normalize`, each input is shifted and scaled by statistics fitted on real data
    (`fit`), then squashed by symlog: joint angles in radians and positions in centimetres then
    reach the network on the same footing, and a stray large value stays bounded.
    """

    def __init__(self, dim: int, d: int, normalize: bool):
        super().__init__()
        self.normalize = normalize
        self.register_buffer("shift", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.proj = nn.Linear(dim, d)

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        """Set the normalization from a sample of inputs (N, dim), leaving out rows that are not all finite
        (a sensor's NaN would otherwise make every later input NaN)."""
        x = x.float()
        x = x[torch.isfinite(x).all(1)]
        if len(x) < 2:
            return  # nothing to fit on: the normalization stays as it was
        self.shift.copy_(x.mean(0))
        self.scale.copy_(x.std(0).clamp_min(1e-3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim) -> (B, 1, d)."""
        x = x.float()
        if self.normalize:
            x = symlog((x - self.shift) / self.scale)
        return self.proj(x).unsqueeze(1)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) triangular filters evenly spaced on the mel scale (HTK formula)."""
    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(np.array(0.0)), hz_to_mel(np.array(sample_rate / 2)), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None] - lower) / (centre - lower)
    falling = (upper - freqs[None]) / (upper - centre)
    return torch.tensor(np.clip(np.minimum(rising, falling), 0.0, None), dtype=torch.float32)


class AudioTokenizer(nn.Module):
    def __init__(self, samples: int, cfg: AudioConfig, d: int):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)
        self.register_buffer("mel", mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels), persistent=False)
        self.frames = samples // cfg.hop + 1
        self.proj = nn.Linear(cfg.n_mels, d)
        self.pos = nn.Parameter(torch.zeros(self.frames, d))

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, N) -> (B, frames, n_mels)."""
        spec = torch.stft(audio.float(), self.cfg.n_fft, self.cfg.hop, window=self.window,
                          center=True, pad_mode="constant", return_complex=True)
        power = spec.abs().pow(2)  # (B, F, T)
        return torch.log(self.mel @ power + 1e-6).transpose(1, 2) / 10.0

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, N) -> (B, frames, d)."""
        return self.proj(self.log_mel(audio)) + self.pos


class TextTokenizer(nn.Module):
    def __init__(self, max_len: int, d: int):
        super().__init__()
        self.embed = nn.Embedding(256, d)
        self.pos = nn.Parameter(torch.zeros(max_len, d))

    def forward(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) uint8 bytes -> tokens (B, L, d) and a padding mask (B, L), True where padding."""
        text = text.long()
        return self.embed(text) + self.pos[: text.shape[1]], text == 0
