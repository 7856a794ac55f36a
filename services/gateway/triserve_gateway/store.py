"""The model store as the management API sees it: what a register ``url`` names, and each version's
TorchServe settings (the archive's ``model-config.yaml``).

A register ``url`` names a model in the store, never anything to download (TorchServe with
``allowed_urls`` refusing every URL): ``mnist.mar`` or ``mnist`` (its highest version),
``mnist/2``, ``mnist/2/mnist.mar``, ``mnist.v2.mar`` (one version), or an absolute path inside
the store. An ``http(s)://``/``file://`` URL, a path with ``..`` or one outside the store is
answered 404 as TorchServe answers it.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from triserve_common.manifest import Manifest, list_versions, read_manifest
from triserve_gateway.torchserve_errors import ModelNotFoundException

_URL = re.compile(r"^(file?|https?)://", re.IGNORECASE)
"""TorchServe's test for a URL (``file?://.*|http(s)?://.*``)."""
_VERSIONED_ARCHIVE = re.compile(r"^(?P<name>[^/]+)\.v(?P<version>[^/]+)\.mar$")


@dataclass(frozen=True)
class ArchiveConfig:
    """A version's TorchServe settings: its archive's ``model-config.yaml``, else TorchServe's defaults."""

    min_workers: int = 0
    max_workers: int = 0
    batch_size: int = 1
    max_batch_delay: int = 100
    response_timeout: int = 120
    startup_timeout: int = 120

    @classmethod
    def of(cls, version_dir: Path, name: str) -> ArchiveConfig:
        mar = version_dir / f"{name}.mar"
        if not mar.is_file():
            return cls()
        try:
            with zipfile.ZipFile(mar) as zf:
                raw: Any = yaml.safe_load(zf.read("model-config.yaml"))
        except (KeyError, OSError, zipfile.BadZipFile, yaml.YAMLError):
            return cls()
        if not isinstance(raw, dict):
            return cls()
        keys = {"minWorkers": "min_workers", "maxWorkers": "max_workers", "batchSize": "batch_size",
                "maxBatchDelay": "max_batch_delay", "responseTimeout": "response_timeout",
                "startupTimeout": "startup_timeout"}
        values = {field: int(raw[key]) for key, field in keys.items() if isinstance(raw.get(key), int)}
        return cls(**values)


@dataclass(frozen=True)
class StoreVersion:
    """One version in the store: its manifest and TorchServe settings."""

    manifest: Manifest
    archive: ArchiveConfig

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version


class ModelStore:
    """Read access to ``<store>/<model>/<version>/manifest.json`` for the management API."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def models(self) -> list[str]:
        """Models with at least one version."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and list_versions(self.root, p.name))

    def versions(self, name: str) -> list[str]:
        return list_versions(self.root, name)

    def get(self, name: str, version: str) -> StoreVersion:
        """One version (404 as TorchServe when absent)."""
        version_dir = self.root / name / version
        if version not in self.versions(name):
            raise ModelNotFoundException(f"Model not found in model store: {name} version {version}")
        return StoreVersion(read_manifest(version_dir), ArchiveConfig.of(version_dir, name))

    def resolve_url(self, url: str) -> tuple[str, str]:
        """(model, version) a register ``url`` names (see module doc); 404 as TorchServe otherwise."""
        if _URL.match(url):
            raise ModelNotFoundException(f"Given URL {url} does not match any allowed URL(s)")
        if ".." in url:
            raise ModelNotFoundException(f"Relative path is not allowed in url: {url}")
        found = self._named(url)
        if found is None:
            raise ModelNotFoundException(f"Model not found at: {url}")
        return found

    def _named(self, url: str) -> tuple[str, str] | None:
        path = Path(url)
        if path.is_absolute():
            try:
                path = path.resolve().relative_to(self.root.resolve())
            except (ValueError, OSError):
                return None
        parts = path.parts
        versioned = _VERSIONED_ARCHIVE.match(url)
        if versioned is not None:
            name, version = versioned["name"], versioned["version"]
        elif len(parts) == 1:
            name, version = parts[0].removesuffix(".mar"), ""
        elif len(parts) == 2 or (len(parts) == 3 and parts[2] == f"{parts[0]}.mar"):
            name, version = parts[0], parts[1]
        else:
            return None
        versions = self.versions(name) if name and "/" not in name else []
        if not versions:
            return None
        if not version:
            return name, versions[-1]
        return (name, version) if version in versions else None
