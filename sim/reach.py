"""Reach: a planar two-link arm brings its fingertip onto a red pad (`omniloop/Reach-v0`).

The arm (assets/reach.xml) has two z-axis hinges driven by torque motors and a passive,
spring-loaded stylus at its end whose fingertip slides onto the pad; a fixed top-down camera sees
it over a table. Each episode the pad moves to a random spot of the reachable annulus and
the arm starts at random joint angles. Reaching is seen (camera), felt (the fingertip presses
lightly on the pad: `info["contact_force"]`) and heard (`sim.audio.ContactAudio`).

Observation (a Dict):
    image   (S, S, 3) uint8   top-down camera, S = image_size (left out with pixels=False)
    proprio (8,) float32      shoulder angle wrapped to [-pi, pi], elbow angle, both joint
                              velocities (rad/s), fingertip xy (m), pad xy (m)
    audio   (800,) float32    16 kHz contact sounds of the last 0.05 s control period
Action: (2,) torques in [-1, 1] for shoulder and elbow.
Reward: 1 while the fingertip is within `SUCCESS_RADIUS` of the pad centre, then falling smoothly
with the distance e = d - SUCCESS_RADIUS beyond the pad's edge, at two scales:
1 - 0.5 tanh(e / REWARD_SCALE) - 0.5 tanh(e / REWARD_SCALE_NEAR). The wide term pulls from anywhere
in the workspace; the near term makes the last centimetres worth learning precisely (half the reward
is lost 3 cm from the pad). `info["success"]` = d < SUCCESS_RADIUS.
Episodes last `episode_length` steps and end truncated, never terminated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium
import mujoco
import numpy as np
from gymnasium import spaces

from sim.audio import ContactAudio, GeomPair, contact_forces
from sim.images import resize_image

ASSET_PATH = Path(__file__).resolve().parent / "assets" / "reach.xml"

CONTROL_PERIOD = 0.05  # s per agent step: 20 Hz control
DEFAULT_EPISODE_LENGTH = 50  # agent steps, 2.5 s of simulated time
TARGET_RADII = (0.06, 0.22)  # m, the annulus the pad is drawn from (the arm reaches 0 .. 0.24)
MIN_START_DISTANCE = 0.05  # m, a pad is redrawn if the arm would start (nearly) on it
SUCCESS_RADIUS = 0.025  # m, the pad radius: success means the fingertip is over the pad
REWARD_SCALE = 0.15  # m, the wide term's distance scale: it still pulls from across the workspace
REWARD_SCALE_NEAR = 0.03  # m, the near term's: it separates "on the pad" from "close to it"
MAX_JOINT_SPEED = 50.0  # rad/s, bound of the velocity observation (top speed is ~12 rad/s)
WORKSPACE = 0.25  # m, bound of the xy observations (the arm's reach is 0.24)
RENDER_SIZE = 256  # side of the frame `render()` returns for people
SUPERSAMPLE = 2  # observation images are rendered this many times larger, then area-averaged
CAMERA = "top"
# The stylus presses on the pad with 0.1-0.2 N, and a fast arrival raises the first force to
# ~0.25 N: a 0.2 N scale puts those on the steep part of the saturating amplitude law.
AUDIO_FORCE_SCALE = 0.2  # N
AUDIO_IMPACT_THRESHOLD = 0.1  # N per physics step: a stylus bouncing on the rim, not sliding


def reach_reward(distance: float) -> float:
    """Dense reward in [0, 1]: 1 over the pad, then falling with the distance beyond its edge."""
    beyond = max(distance - SUCCESS_RADIUS, 0.0)
    return float(1.0 - 0.5 * np.tanh(beyond / REWARD_SCALE) - 0.5 * np.tanh(beyond / REWARD_SCALE_NEAR))


def sample_target(rng: np.random.Generator) -> np.ndarray:
    """A pad position (2,) drawn uniformly by area from the annulus `TARGET_RADII`."""
    r_min, r_max = TARGET_RADII
    radius = np.sqrt(rng.uniform(r_min**2, r_max**2))  # sqrt: uniform over area, not radius
    angle = rng.uniform(-np.pi, np.pi)
    return np.array([radius * np.cos(angle), radius * np.sin(angle)])


def wrap_angle(angle: float) -> float:
    """`angle` mapped into [-pi, pi]."""
    return float((angle + np.pi) % (2.0 * np.pi) - np.pi)


class ReachEnv(gymnasium.Env):
    """The Reach task as a Gymnasium env; see the module docstring for spaces and reward."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": round(1.0 / CONTROL_PERIOD)}
    # Where the joints are in `proprio`, for whoever must move the arm to a pose (a replay on a robot):
    # the shoulder and elbow angles, their velocities; the shoulder turns freely; actions are torques.
    POSE_LAYOUT = {"position": [0, 1], "velocity": [2, 3], "continuous": [True, False], "action": "effort"}

    def __init__(
        self,
        render_mode: str | None = None,
        image_size: int = 64,
        episode_length: int = DEFAULT_EPISODE_LENGTH,
        seed: int | None = None,
        pixels: bool = True,
    ) -> None:
        """`episode_length` 0 means the default (50); `seed` seeds the first `reset()` without one;
        `pixels` False leaves the camera image out of the observation (and does not render it)."""
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if episode_length < 0:
            raise ValueError(f"episode_length must be >= 0 (0 = default), got {episode_length}")
        self.render_mode = render_mode
        self.image_size = image_size
        self.pixels = pixels
        self.episode_length = episode_length or DEFAULT_EPISODE_LENGTH
        self._pending_seed = seed

        self._model = mujoco.MjModel.from_xml_path(str(ASSET_PATH))
        self._data = mujoco.MjData(self._model)
        timestep = self._model.opt.timestep
        self._frame_skip = int(round(CONTROL_PERIOD / timestep))
        if abs(self._frame_skip * timestep - CONTROL_PERIOD) > 1e-9:
            raise ValueError(f"{ASSET_PATH.name}: timestep {timestep} does not divide {CONTROL_PERIOD}")
        self._joint_qpos = [self._model.joint(n).qposadr[0] for n in ("shoulder", "elbow")]
        self._joint_dof = [self._model.joint(n).dofadr[0] for n in ("shoulder", "elbow")]
        self._elbow_range = self._model.joint("elbow").range.copy()
        self._tip_site = self._model.site("fingertip").id
        self._pad_geom = self._model.geom("pad").id
        self._target_mocap = self._model.body("target").mocapid[0]

        self._audio = ContactAudio(
            period=CONTROL_PERIOD,
            substeps=self._frame_skip,
            force_scale=AUDIO_FORCE_SCALE,
            impact_threshold=AUDIO_IMPACT_THRESHOLD,
        )
        # Created lazily: mujoco.Renderer needs a GL context, which only rendering should pay for.
        self._renderer: mujoco.Renderer | None = None
        self._human_renderer: mujoco.Renderer | None = None
        self._steps = 0

        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        angle_bound = np.float32(np.pi)
        proprio_high = np.array(
            [angle_bound, angle_bound, MAX_JOINT_SPEED, MAX_JOINT_SPEED] + [WORKSPACE] * 4, dtype=np.float32
        )
        observation: dict[str, spaces.Box] = {
            "image": spaces.Box(0, 255, shape=(image_size, image_size, 3), dtype=np.uint8),
            "proprio": spaces.Box(-proprio_high, proprio_high, dtype=np.float32),
            "audio": spaces.Box(-1.0, 1.0, shape=(self._audio.samples_per_period,), dtype=np.float32),
        }
        if not pixels:
            del observation["image"]
        self.observation_space = spaces.Dict(observation)

    # ----------------------------------------------------------------------------- Gymnasium API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Random arm angles (zero velocity) and a random pad, both drawn from `np_random`."""
        if seed is None and self._pending_seed is not None:
            seed = self._pending_seed
        self._pending_seed = None
        super().reset(seed=seed)
        rng = self.np_random
        mujoco.mj_resetData(self._model, self._data)
        self._data.qpos[self._joint_qpos[0]] = rng.uniform(-np.pi, np.pi)
        self._data.qpos[self._joint_qpos[1]] = rng.uniform(0.9 * self._elbow_range[0], 0.9 * self._elbow_range[1])
        mujoco.mj_kinematics(self._model, self._data)
        start = self._data.site_xpos[self._tip_site, :2].copy()
        target = sample_target(rng)
        # Bounded redraws keep reset's cost fixed; the chance that 100 draws all land near the
        # start is nil (the near zone is < 5 % of the annulus).
        for _ in range(100):
            if np.linalg.norm(target - start) >= MIN_START_DISTANCE:
                break
            target = sample_target(rng)
        self._place_target(target)
        mujoco.mj_forward(self._model, self._data)
        self._audio.reset(contact_forces(self._model, self._data))
        self._steps = 0
        silence = np.zeros(self._audio.samples_per_period, dtype=np.float32)
        return self._observation(silence), self._info()

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Hold the torques `action` (2,) for one control period (10 physics steps)."""
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (2,):
            raise ValueError(f"Reach expects an action of shape (2,), got {np.shape(action)}")
        self._data.ctrl[:] = np.clip(action, -1.0, 1.0)
        heard: list[dict[GeomPair, float]] = []
        for _ in range(self._frame_skip):
            mujoco.mj_step(self._model, self._data)
            heard.append(contact_forces(self._model, self._data))
        # mj_step leaves positions one integration ahead of the derived quantities (site and
        # geom poses, contacts); recomputing them makes image, proprio and info agree with qpos.
        mujoco.mj_forward(self._model, self._data)
        self._steps += 1
        info = self._info()
        reward = reach_reward(info["distance"])
        truncated = self._steps >= self.episode_length
        return self._observation(self._audio.period(heard)), reward, False, truncated, info

    def render(self) -> np.ndarray | None:
        """A (256, 256, 3) uint8 frame of the top camera in 'rgb_array' mode; None otherwise."""
        if self.render_mode != "rgb_array":
            return None
        if self._human_renderer is None:
            self._human_renderer = self._make_renderer(RENDER_SIZE)
        return self._render_with(self._human_renderer)

    def close(self) -> None:
        """Free the renderers' GL contexts; safe to call more than once."""
        for renderer in (self._renderer, self._human_renderer):
            if renderer is not None:
                renderer.close()
        self._renderer = None
        self._human_renderer = None

    # ---------------------------------------------------------------------- state and assets

    @staticmethod
    def model_xml() -> str:
        """The MJCF text of the task (to store beside recorded episodes)."""
        return ASSET_PATH.read_text()

    @property
    def control_period(self) -> float:
        """Seconds of simulated time per agent step."""
        return CONTROL_PERIOD

    @property
    def model(self) -> mujoco.MjModel:
        return self._model

    @property
    def data(self) -> mujoco.MjData:
        return self._data

    def get_state(self) -> dict[str, np.ndarray]:
        """Copies of the simulation state, enough to replay an episode exactly from here.

        time (1,); qpos (3,) and qvel (3,): shoulder, elbow, stylus slide; act (0,); target (2,):
        the pad's xy; qacc_warmstart (3,): the constraint solver's starting guess, without which
        a replay through contacts may differ in the last bits.
        """
        return {
            "time": np.array([self._data.time]),
            "qpos": self._data.qpos.copy(),
            "qvel": self._data.qvel.copy(),
            "act": self._data.act.copy(),
            "target": self._data.mocap_pos[self._target_mocap, :2].copy(),
            "qacc_warmstart": self._data.qacc_warmstart.copy(),
        }

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore a `get_state()` dict (qacc_warmstart optional). The episode step count follows
        from the time; sounds that were ringing are not part of the state and stop."""
        for key, size in (("qpos", self._model.nq), ("qvel", self._model.nv), ("act", self._model.na)):
            value = np.asarray(state[key], dtype=np.float64)
            if value.shape != (size,):
                raise ValueError(f"state[{key!r}] must have shape ({size},), got {value.shape}")
        target = np.asarray(state["target"], dtype=np.float64)
        if target.shape != (2,):
            raise ValueError(f"state['target'] must have shape (2,), got {target.shape}")
        self._data.time = float(np.asarray(state["time"]).reshape(-1)[0])
        self._data.qpos[:] = state["qpos"]
        self._data.qvel[:] = state["qvel"]
        self._data.act[:] = state["act"]
        if "qacc_warmstart" in state:
            self._data.qacc_warmstart[:] = state["qacc_warmstart"]
        self._place_target(target)
        mujoco.mj_forward(self._model, self._data)
        self._audio.reset(contact_forces(self._model, self._data))
        self._steps = int(round(self._data.time / CONTROL_PERIOD))

    def observe(self) -> dict[str, np.ndarray]:
        """The observation of the current state (after `set_state`, say), with silent audio: sound is
        made by contacts over a control period and is not part of the state."""
        return self._observation(np.zeros(self._audio.samples_per_period, dtype=np.float32))

    # ------------------------------------------------------------------------------- helpers

    def _place_target(self, xy: np.ndarray) -> None:
        self._data.mocap_pos[self._target_mocap] = [xy[0], xy[1], 0.0]

    def _fingertip(self) -> np.ndarray:
        """Fingertip xy (2,) in m."""
        return self._data.site_xpos[self._tip_site, :2].copy()

    def _target(self) -> np.ndarray:
        """Pad centre xy (2,) in m."""
        return self._data.mocap_pos[self._target_mocap, :2].copy()

    def _pad_force(self) -> float:
        """Total normal force (N) on the pad now."""
        pad = self._pad_geom
        return float(sum(f for pair, f in contact_forces(self._model, self._data).items() if pad in pair))

    def _info(self) -> dict[str, Any]:
        distance = float(np.linalg.norm(self._fingertip() - self._target()))
        return {"distance": distance, "success": distance < SUCCESS_RADIUS, "contact_force": self._pad_force()}

    def _proprio(self) -> np.ndarray:
        """(8,) float32: see the module docstring."""
        q = self._data.qpos[self._joint_qpos]
        qd = np.clip(self._data.qvel[self._joint_dof], -MAX_JOINT_SPEED, MAX_JOINT_SPEED)
        angles = [wrap_angle(q[0]), q[1]]  # the shoulder turns freely; the elbow has limits
        return np.concatenate([angles, qd, self._fingertip(), self._target()]).astype(np.float32)

    def _observation(self, audio: np.ndarray) -> dict[str, np.ndarray]:
        observation = {"proprio": self._proprio(), "audio": audio}
        if self.pixels:
            if self._renderer is None:
                self._renderer = self._make_renderer(SUPERSAMPLE * self.image_size)
            observation = {"image": resize_image(self._render_with(self._renderer), self.image_size), **observation}
        return observation

    def _make_renderer(self, size: int) -> mujoco.Renderer:
        """A renderer of (size, size) frames; grows the offscreen buffer if it is smaller."""
        visual = self._model.vis.global_
        visual.offwidth = max(visual.offwidth, size)
        visual.offheight = max(visual.offheight, size)
        try:
            renderer = mujoco.Renderer(self._model, size, size)
        except mujoco.FatalError as exc:
            raise RuntimeError(
                f"cannot create an offscreen MuJoCo renderer ({exc}). MuJoCo picks its GL backend when "
                "it is first imported: import sim before mujoco, or set MUJOCO_GL=egl in the environment."
            ) from exc
        # The MJCF already turns these off; the scene flags (kept between renders) make sure.
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        return renderer

    def _render_with(self, renderer: mujoco.Renderer) -> np.ndarray:
        """A fresh (size, size, 3) uint8 frame of the top camera."""
        renderer.update_scene(self._data, camera=CAMERA)
        return renderer.render()
