# Newcomer entry points on a machine without ROS 2 (see README.md):
#   make demo   - set up if needed, then run the demo (cmcnn-demo)
#   make test   - set up if needed, then run the test suite
#   make test-distro - the ROS-free tests under ROS 2 Jazzy's (Ubuntu 24.04's)
#                 library versions, in .venv-distro (requirements-distro.txt)
#   make setup  - create .venv, install pinned deps, build the messages
# On a robot with ROS 2, use colcon instead (README.md).
SHELL := /bin/bash
ENV_FILE := .ros_prefix/env.sh
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: setup test test-distro demo clean

# The setup script is idempotent and takes well under a second when nothing
# changed, so every target runs it: that *is* the "if needed" check.
setup:
	@bash scripts/setup.sh

# The linter first (seconds): a style error fails the run before the suite starts.
test: setup
	@source $(ENV_FILE) && ruff check . && python -m pytest $(PYTEST_ARGS)

# No `setup` prerequisite: it needs no ROS and builds its own venv.
test-distro:
	@bash scripts/test_distro.sh $(PYTEST_ARGS)

demo: setup
	@source $(ENV_FILE) && cmcnn-demo $(DEMO_ARGS)

# Removes the venvs and the message prefix; the next `make setup` rebuilds all.
clean:
	rm -rf .venv .venv-distro .ros_prefix
