# Sourced by scripts/demo and scripts/test: make .venv hold exactly what pyproject.toml asks for.
# Why a script and not "pip install" in the README: torch must be installed as the exact pin first
# (any looser spec pulls a multi-GB CUDA build), and DeepSpeed must be built without its C++ ops and
# without build isolation. The venv is rebuilt only when this file or pyproject.toml changes.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$here/.venv"
stamp="$venv/.ckptwatch-stamp"
want="$(cat "$here/pyproject.toml" "$here/scripts/env.sh" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "== setting up $venv (first run takes about 2 minutes)" >&2
  python3 -m venv "$venv"
  pip_q() {
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" >"$venv/pip.log" 2>&1 \
      || { grep -v "is ignored: it is neither" "$venv/pip.log" | tail -n 30 >&2; echo "pip install $* failed" >&2; return 1; }
  }
  pip_q "torch==2.13.0"
  pip_q -e "$here[test]"
  # DeepSpeed writes the ZeRO checkpoints the tests judge; its ops are not needed on the CPU.
  DS_BUILD_OPS=0 pip_q --no-build-isolation "deepspeed==0.19.8"
  "$venv/bin/python" -c "import torch, ckptwatch" || { echo "setup of $venv failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
