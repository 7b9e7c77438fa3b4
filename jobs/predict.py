"""Entry for `ray job submit --working-dir . -- python jobs/predict.py ...`: the same flags as `fgbg predict`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, when fgbg is not installed

from fgbg.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
