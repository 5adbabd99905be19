# Sourced by scripts/setup, scripts/with_env, scripts/test and scripts/ros2_tools:
# which ROS 2 distribution's environment to use (SEG_ROS_DISTRO), and where it lives.
#   kilted (default): .venv/        .ws/        scripts/requirements.txt
#   jazzy:            .venv-jazzy/  .ws-jazzy/  scripts/requirements-jazzy.txt
# Both can exist side by side.
SEG_ROS_DISTRO="${SEG_ROS_DISTRO:-kilted}"
case "$SEG_ROS_DISTRO" in
  kilted) VENV="$ROOT/.venv" WS="$ROOT/.ws" REQS="$ROOT/scripts/requirements.txt" ;;
  jazzy)  VENV="$ROOT/.venv-jazzy" WS="$ROOT/.ws-jazzy" REQS="$ROOT/scripts/requirements-jazzy.txt" ;;
  *) echo "SEG_ROS_DISTRO=$SEG_ROS_DISTRO: must be kilted or jazzy" >&2; exit 2 ;;
esac
export SEG_ROS_DISTRO
# pip's cache inside the repository (git-ignored), not ~/.cache/pip
export PIP_CACHE_DIR="${PIP_CACHE_DIR:-$ROOT/.cache/pip}"
