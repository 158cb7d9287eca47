# Two commands do everything on a fresh machine:
#   make run    set up, then run the default simulated agent (omniloop sim)
#   make test   set up, then run the whole test suite
# `make setup` is what both share; it is safe to run again and does only what is missing.

VENV     ?= .venv
PY       := $(VENV)/bin/python
SYS_PKGS := python3 python3-venv libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri libosmesa6 libportaudio2 \
            g++ make libzmq3-dev libmsgpack-dev
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export MUJOCO_GL ?= egl

.PHONY: setup system-packages run test robot-server-cpp clean
setup: system-packages $(VENV)/.installed

system-packages:
	@missing=""; for p in $(SYS_PKGS); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi

# torch==2.13.0 first, where the venv has no torch: it is the CPU build on this disk; the project
# itself asks only for a range, which a GPU machine may already satisfy with its own build.
$(VENV)/.installed: pyproject.toml
	[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $@

run: setup
	$(VENV)/bin/omniloop sim $(ARGS)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

# the C++ robot-side server (robot_bridge/cpp): robot_bridge/cpp/build/omniloop-robot-server
robot-server-cpp: system-packages
	$(MAKE) -C robot_bridge/cpp

clean:
	rm -rf $(VENV) runs .pytest_cache robot_bridge/cpp/build
