"""Side-by-side MP4s, the metrics CSV and the learning-curve PNG."""

from __future__ import annotations

from pathlib import Path

import cv2
import imageio.v2 as imageio
import numpy as np
import pytest

from agent.metrics import MetricsLog, read_metrics
from agent.plots import _rolling_mean, plot_learning_curve
from agent.video import GAP, LABEL_HEIGHT, compose_frame, write_side_by_side


def solid(colour: tuple[int, int, int], shape: tuple[int, int] = (16, 12)) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8), (*shape, 3)).copy()


def test_compose_places_upscaled_panels_exactly() -> None:
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    imagined = rng.integers(0, 256, (6, 4, 3), dtype=np.uint8)
    frame = compose_frame(real, imagined, scale=3)
    assert frame.shape[0] % 16 == 0 and frame.shape[1] % 16 == 0
    assert frame.shape[0] >= LABEL_HEIGHT + 18 and frame.shape[1] >= 21 + GAP + 12
    real_panel = frame[LABEL_HEIGHT : LABEL_HEIGHT + 15, :21]
    np.testing.assert_array_equal(real_panel, np.kron(real, np.ones((3, 3, 1), np.uint8)))
    left = 21 + GAP
    imagined_panel = frame[LABEL_HEIGHT : LABEL_HEIGHT + 18, left : left + 12]
    np.testing.assert_array_equal(imagined_panel, imagined.repeat(3, 0).repeat(3, 1))
    assert frame[:LABEL_HEIGHT, :21].max() > 200  # the label is drawn in the band above the camera


def test_mp4_has_every_frame_at_the_right_size(tmp_path: Path) -> None:
    real = [solid((220, 30, 30)) for _ in range(10)]  # red camera
    imagined = [solid((30, 30, 220)) for _ in range(10)]  # blue imagination
    path = tmp_path / "video" / "episode.mp4"
    write_side_by_side(path, real, imagined, fps=10, scale=4)
    expected = compose_frame(real[0], imagined[0], scale=4).shape
    reader = imageio.get_reader(path, format="FFMPEG")
    try:
        frames = [frame for frame in reader]
        codec = reader.get_meta_data()["codec"]
    finally:
        reader.close()
    assert len(frames) == 10
    assert codec == "h264"
    assert all(frame.shape == expected for frame in frames)
    centre_y = LABEL_HEIGHT + 32
    left_pixel = frames[5][centre_y, 24].astype(int)
    right_pixel = frames[5][centre_y, 48 + GAP + 24].astype(int)
    assert left_pixel[0] > 150 and left_pixel[2] < 100, left_pixel  # H.264 is lossy; colours are close
    assert right_pixel[2] > 150 and right_pixel[0] < 100, right_pixel


def test_video_refuses_bad_sequences(tmp_path: Path) -> None:
    frame = solid((0, 0, 0))
    with pytest.raises(ValueError, match="no frames"):
        write_side_by_side(tmp_path / "a.mp4", [], [], fps=10)
    with pytest.raises(ValueError, match="real has 2 frames but imagined has 1"):
        write_side_by_side(tmp_path / "a.mp4", [frame, frame], [frame], fps=10)
    with pytest.raises(ValueError, match=r"imagined\[1\] must be \(H, W, 3\) uint8"):
        write_side_by_side(tmp_path / "a.mp4", [frame, frame], [frame, frame.astype(np.float32)], fps=10)
    assert not (tmp_path / "a.mp4").exists()


def test_metrics_widen_header_and_resume(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    log = MetricsLog(path)
    log.append({"episode": 0, "env_step": 100, "return": 1.5})
    log.append({"episode": 1, "env_step": 200, "return": -0.25, "success": True, "note": "a, b"})
    log.append({"episode": 2, "env_step": 300, "return": np.float32(0.5), "success": False})
    assert path.read_text().splitlines()[0] == "episode,env_step,return,success,note"
    assert read_metrics(path) == [
        {"episode": 0, "env_step": 100, "return": 1.5},
        {"episode": 1, "env_step": 200, "return": -0.25, "success": 1, "note": "a, b"},
        {"episode": 2, "env_step": 300, "return": 0.5, "success": 0},
    ]
    # A crash tore the next row mid-line; the resumed log drops it and carries on.
    with path.open("a") as file:
        file.write("3,400,0.7")
    resumed = MetricsLog(path)
    assert len(resumed.rows) == 3
    resumed.append({"episode": 3, "env_step": 400, "return": 0.75, "surprise": 0.125})
    rows = read_metrics(path)
    assert [r["episode"] for r in rows] == [0, 1, 2, 3]
    assert rows[3] == {"episode": 3, "env_step": 400, "return": 0.75, "surprise": 0.125}
    assert rows[1]["note"] == "a, b"
    with pytest.raises(TypeError, match="metric 'bad' is a list"):
        resumed.append({"bad": [1, 2]})
    # A run resumed from the checkpoint after episode 1 runs episodes 2 and 3 again: their rows go.
    assert MetricsLog(path).drop_after("episode", 1) == 2
    assert [r["episode"] for r in read_metrics(path)] == [0, 1]
    assert read_metrics(path)[1]["note"] == "a, b"
    with pytest.raises(ValueError, match="column 'note' holds 'a, b', not a number"):
        MetricsLog(path).drop_after("note", 1)


def test_rolling_mean_uses_the_last_window() -> None:
    values = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    np.testing.assert_allclose(_rolling_mean(values, 2), [1.0, 0.5, 0.5, 1.0, 0.5])


@pytest.mark.parametrize("columns", [("return", "success", "surprise"), ("return",)])
def test_learning_curve_png(tmp_path: Path, columns: tuple[str, ...]) -> None:
    csv_path = tmp_path / "run" / "metrics.csv"
    log = MetricsLog(csv_path)
    for episode in range(25):
        row = {"episode": episode, "env_step": 200 * (episode + 1), "return": float(np.sin(episode))}
        row.update({"success": episode % 3 == 0, "surprise": 1.0 / (episode + 1)})
        log.append({k: v for k, v in row.items() if k in columns or k in ("episode", "env_step")})
    out = tmp_path / "plots" / "learning_curve.png"
    plot_learning_curve(csv_path, out)
    image = cv2.imread(str(out))
    assert image is not None and image.shape == (900, 800, 3)
    assert image.std() > 10  # something was drawn


def test_health_plot_draws_what_the_run_logged(tmp_path):
    from agent.plots import plot_health

    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text(
        "env_step,train_consistency_loss,train_reward_loss,train_value_loss,train_policy_loss,train_grad_norm,"
        "train_moe_max_load,train_moe_entropy,skipped_updates,restored_weights\n"
        "100,0.5,2.0,3.0,-0.9,4.0,1.3,1.2,0,0\n200,0.2,1.0,2.0,-0.95,2.0,1.1,1.3,1,1\n")
    plot_health(csv_path, tmp_path / "health.png")
    assert imageio.imread(tmp_path / "health.png").shape[0] > 300
    dense = tmp_path / "dense.csv"  # a dense model logs no expert statistics: the plot still draws
    dense.write_text("env_step,train_value_loss\n100,1.0\n")
    plot_health(dense, tmp_path / "dense.png")
    assert (tmp_path / "dense.png").stat().st_size > 1000
