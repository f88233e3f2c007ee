"""``python -m training.detector``: the orchard detector's command line (training/detector/command.py)."""

from training.detector.command import main

if __name__ == "__main__":
    raise SystemExit(main())
