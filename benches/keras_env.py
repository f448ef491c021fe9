"""The virtual environment the Keras comparison scripts run in (shared by keras_kernels.py and
keras_steps.py): created on first use with tensorflow-cpu and keras, outside the repository."""
import os
import subprocess
import sys
import venv

VENV = os.environ.get("KERAS_BENCH_VENV", os.path.expanduser("~/.cache/tanuki/keras-bench-venv"))


def ensure_venv(script):
    """Re-runs `script` inside the venv (creating it first) unless already there."""
    if os.environ.get("KERAS_BENCH_IN_VENV"):
        return
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py):
        print(f"creating {VENV} (tensorflow-cpu, keras)...", file=sys.stderr)
        os.makedirs(os.path.dirname(VENV), exist_ok=True)
        venv.create(VENV, with_pip=True)
        subprocess.check_call([py, "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
        subprocess.check_call([py, "-m", "pip", "install", "--quiet", "tensorflow-cpu", "keras"])
    env = dict(os.environ, KERAS_BENCH_IN_VENV="1", TF_CPP_MIN_LOG_LEVEL="2")
    sys.exit(subprocess.call([py, os.path.abspath(script)] + sys.argv[1:], env=env))
