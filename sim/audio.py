"""Contact sounds: MuJoCo contacts in, one control period of audio samples out.

The model, deliberately simple and fully deterministic (no noise):

* Sample rate: `AUDIO_SAMPLE_RATE` = 16 kHz, mono, float32 samples in [-1, 1].
* What rings a tone: for every physics step, the caller passes the contacts of that step as
  {(geom1, geom2): normal force in N} (see `contact_forces`; only pairs pushing with a positive
  normal force count as touching). A tone starts when
  - a pair touches that did not touch at the previous physics step (a new contact), with the
    pair's normal force F as its strength, or
  - a pair that already touched pushes harder by more than `impact_threshold` N in one physics
    step (an impact), with the jump dF as its strength.
  A pair that keeps touching with a steady force is silent after its first tone.
* Amplitude law: a = max_amplitude * (1 - exp(-F / force_scale)): linear for light touches,
  saturating at `max_amplitude` for hard ones.
* Tone: a * exp(-t / decay) * sin(2 pi f t), t from the start of the physics step in which the
  contact was found (the onset is quantized to physics steps). The default decay is 30 ms. The
  frequency f is `base_frequency` (880 Hz) raised by a pentatonic interval chosen from the geom
  ids, so different pairs of bodies sound different but always the same.
* Carry-over: tones that are still ringing at the end of a control period continue into the next;
  a tone is dropped once its envelope falls below 1e-4 (-80 dB).
* Mixing: tones add up and the sum passes through tanh, which is near the identity for a single
  quiet tone and keeps loud chords within [-1, 1].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import mujoco
import numpy as np

AUDIO_SAMPLE_RATE = 16000  # Hz

GeomPair = tuple[int, int]

# Semitones above the base frequency, picked per geom pair: a pentatonic set never sounds harsh.
_PENTATONIC = (0, 2, 4, 7, 9)
# Envelope below which a tone is inaudible and is dropped (-80 dB).
_SILENCE = 1e-4


def contact_forces(model: mujoco.MjModel, data: mujoco.MjData) -> dict[GeomPair, float]:
    """Normal force (N) of every touching geom pair in `data.contact`, summed over its contacts.

    Pairs are ordered (smaller geom id first). Contacts inside their margin but not yet pushing
    (zero normal force) are left out: they make no sound and are not "touching".
    """
    forces: dict[GeomPair, float] = {}
    wrench = np.zeros(6)
    for i in range(data.ncon):
        mujoco.mj_contactForce(model, data, i, wrench)
        normal = float(wrench[0])  # the contact frame's first axis is the normal
        if normal <= 0.0:
            continue
        g1, g2 = (int(g) for g in data.contact[i].geom)
        pair = (min(g1, g2), max(g1, g2))
        forces[pair] = forces.get(pair, 0.0) + normal
    return forces


@dataclass(frozen=True)
class _Tone:
    start: int  # absolute sample index of the onset, counted from the last reset
    amplitude: float
    frequency: float  # Hz


class ContactAudio:
    """Turns per-physics-step contact forces into the audio of one control period.

    Independent of any task: it sees only geom pairs and forces. Use `reset` at the start of an
    episode and `period` once per control step.
    """

    def __init__(
        self,
        period: float,
        substeps: int,
        sample_rate: int = AUDIO_SAMPLE_RATE,
        base_frequency: float = 880.0,
        decay: float = 0.03,
        force_scale: float = 1.0,
        impact_threshold: float = 0.5,
        max_amplitude: float = 0.6,
    ) -> None:
        """`period`: seconds per control step; `substeps`: physics steps per control step.

        `force_scale` (N) is the force at which a tone reaches 63 % of `max_amplitude`;
        `impact_threshold` (N) is the force jump within one physics step that counts as an impact.
        """
        samples = period * sample_rate
        if abs(samples - round(samples)) > 1e-6 or round(samples) < 1:
            raise ValueError(f"period {period} s is not a whole number of samples at {sample_rate} Hz")
        if substeps < 1:
            raise ValueError(f"substeps must be at least 1, got {substeps}")
        self.sample_rate = sample_rate
        self.samples_per_period = int(round(samples))
        self.substeps = substeps
        self.base_frequency = base_frequency
        self.decay = decay
        self.force_scale = force_scale
        self.impact_threshold = impact_threshold
        self.max_amplitude = max_amplitude
        self._tones: list[_Tone] = []
        self._previous: dict[GeomPair, float] = {}
        self._clock = 0  # samples produced since the last reset

    def reset(self, contacts: Mapping[GeomPair, float] | None = None) -> None:
        """Silence every tone and take `contacts` as the current touching state (no tone for them)."""
        self._tones = []
        self._previous = dict(contacts or {})
        self._clock = 0

    def amplitude(self, force: float) -> float:
        """Saturating amplitude of a tone struck with `force` N."""
        return self.max_amplitude * (1.0 - float(np.exp(-max(force, 0.0) / self.force_scale)))

    def frequency(self, pair: GeomPair) -> float:
        """The pitch (Hz) of a geom pair: the same pair always rings the same note."""
        semitones = _PENTATONIC[(pair[0] * 7 + pair[1] * 13) % len(_PENTATONIC)]
        return self.base_frequency * 2.0 ** (semitones / 12.0)

    def period(self, substep_contacts: Sequence[Mapping[GeomPair, float]]) -> np.ndarray:
        """Audio of one control period, shape (samples_per_period,), float32 in [-1, 1].

        `substep_contacts` holds one {pair: normal force} mapping per physics step, in order;
        it must have `substeps` entries.
        """
        if len(substep_contacts) != self.substeps:
            raise ValueError(f"expected contacts of {self.substeps} physics steps, got {len(substep_contacts)}")
        for k, contacts in enumerate(substep_contacts):
            onset = self._clock + (k * self.samples_per_period) // self.substeps
            self._strike(contacts, onset)
        samples = self._mix(self._clock, self.samples_per_period)
        self._clock += self.samples_per_period
        self._drop_silent()
        return samples

    def _strike(self, contacts: Mapping[GeomPair, float], onset: int) -> None:
        """Start a tone for every new contact and every impact in one physics step."""
        for pair, force in contacts.items():
            before = self._previous.get(pair)
            strength = force if before is None else force - before
            if before is None or strength > self.impact_threshold:
                self._tones.append(_Tone(onset, self.amplitude(strength), self.frequency(pair)))
        self._previous = dict(contacts)

    def _mix(self, start: int, count: int) -> np.ndarray:
        """Sum of all tones over samples [start, start + count), soft-clipped; shape (count,)."""
        out = np.zeros(count, dtype=np.float64)
        index = np.arange(start, start + count)
        for tone in self._tones:
            t = (index - tone.start) / self.sample_rate
            ringing = t >= 0.0
            tt = t[ringing]
            out[ringing] += tone.amplitude * np.exp(-tt / self.decay) * np.sin(2.0 * np.pi * tone.frequency * tt)
        return np.tanh(out).astype(np.float32)

    def _drop_silent(self) -> None:
        """Forget tones whose envelope has fallen below the silence level by now."""
        now = self._clock / self.sample_rate
        self._tones = [
            tone
            for tone in self._tones
            if tone.amplitude * np.exp(-(now - tone.start / self.sample_rate) / self.decay) >= _SILENCE
        ]
