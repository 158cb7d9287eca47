import os

# Offscreen rendering without a display; must be set before anything imports mujoco.
os.environ.setdefault("MUJOCO_GL", "egl")
