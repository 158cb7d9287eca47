"""Drivers the server runs: `sim` by name, or a user's driver named as `module:Class`, composed
with an OpenCV camera and a sounddevice microphone when the server config asks for them."""

from __future__ import annotations

import importlib

from robot_bridge.driver import Driver, DriverError, Sensor, WithSensors
from robot_bridge.server import ServerConfig

NAMED = {"sim": "robot_bridge.drivers.sim:SimDriver"}


def build_driver(cfg: ServerConfig) -> Driver:
    """The driver `cfg.driver` with `cfg.driver_options`, plus its configured sensors."""
    target = NAMED.get(cfg.driver, cfg.driver)
    module_name, _, class_name = target.partition(":")
    if not class_name:
        raise DriverError(f"driver {cfg.driver!r} is neither a known name ({', '.join(NAMED)}) nor module:Class")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise DriverError(f"driver {cfg.driver!r}: cannot load {target}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise DriverError(f"driver {cfg.driver!r}: {target} is not a robot_bridge.driver.Driver")
    try:
        driver = cls(**cfg.driver_options)
    except TypeError as exc:
        raise DriverError(f"driver {cfg.driver!r}: driver_options do not fit: {exc}") from None
    sensors: list[Sensor] = []
    if cfg.camera is not None:
        from robot_bridge.drivers.camera import Camera

        sensors.append(Camera(cfg.camera.source, cfg.camera.size, cfg.camera.key))
    if cfg.microphone is not None:
        from robot_bridge.drivers.microphone import Microphone

        mic = cfg.microphone
        sensors.append(Microphone(mic.device, mic.sample_rate, mic.samples, mic.key))
    return WithSensors(driver, sensors) if sensors else driver
