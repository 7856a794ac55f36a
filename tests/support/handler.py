"""triserve's TorchServe handler (``handlers/``), imported as TorchServe's worker imports it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from triserve_common.paths import REPO_ROOT

HANDLER_DIR = REPO_ROOT / "handlers"
HANDLER_FILE = HANDLER_DIR / "mnist_handler.py"


def handler_files() -> list[Path]:
    """The handler and the modules it imports: what every ``.mar`` carries (``handler_modules``)."""
    return sorted(HANDLER_DIR.glob("*.py"))


def load_handler_module(name: str = "mnist_handler") -> ModuleType:
    """A fresh ``handlers/mnist_handler.py`` module named ``name``; its folder on ``sys.path`` (as TorchServe
    puts the unpacked archive's) so it imports the modules beside it."""
    if str(HANDLER_DIR) not in sys.path:
        sys.path.append(str(HANDLER_DIR))
    spec = importlib.util.spec_from_file_location(name, HANDLER_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
