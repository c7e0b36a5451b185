r"""Trains (or resumes) one run; the workdir holds everything the run needs.

    python -m experiments.train --config=configs/toy.py:smoke --workdir=/tmp/toy
    python -m experiments.train --config=configs/toy.py --config.optim.lr=1e-3 --workdir=/tmp/toy
    python -m experiments.train --workdir=/tmp/toy     # resume with the stored config

The repository's command for `prm.train` (run it from the repository root, where `configs/` is
importable); a project that installs prm runs `python -m prm.train` with its own config files.
"""

from prm.train import run

if __name__ == "__main__":
    run()
