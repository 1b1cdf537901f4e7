# Sourced by the scripts that compare with PyTorch: `torch_venv DIR` makes sure DIR is a
# Python virtual environment in which `import torch` works (the first call installs PyPI's
# `torch` wheel, which brings CUDA libraries, several GB) and sets `py` to its python.
# Needs python3 with venv or pip.
torch_venv() {
    local venv=$1
    py="$venv/bin/python"
    if [ -x "$py" ] && "$py" -c 'import torch' 2>/dev/null; then
        return 0
    fi
    echo "== installing CPU PyTorch from PyPI into $venv (large download) =="
    if [ ! -x "$py" ]; then
        # Debian's python3 lacks ensurepip unless python3-venv is installed: then create the
        # environment without pip and install into it with the system pip.
        if ! python3 -m venv "$venv" 2>/dev/null; then
            rm -rf "$venv"
            python3 -m venv --without-pip "$venv"
        fi
    fi
    if "$py" -m pip --version >/dev/null 2>&1; then
        "$py" -m pip install torch
    else
        python3 -m pip --python "$py" install torch
    fi
}
