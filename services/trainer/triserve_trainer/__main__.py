"""``python -m triserve_trainer`` = ``triserve-train``."""

from triserve_trainer.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
