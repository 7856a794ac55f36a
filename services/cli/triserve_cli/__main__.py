"""``python -m triserve_cli``."""

import sys

from triserve_cli.main import main

sys.exit(main())
