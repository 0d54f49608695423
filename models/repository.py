"""The model repository in TF Serving layout: ``<root>/<model name>/<version>/``.

A version is published atomically. The export is written to
``<root>/.staging/<name>-<random>/`` on the same file system, checked against the serving
contract, given its metadata file, and only then renamed to the next integer version. TF
Serving, which polls ``<root>/<name>/`` for numeric folders, never loads a half-written
version.

Version numbers are never reused, even after a version folder is deleted: the highest number
ever issued is stored in ``<root>/<name>/.highest_version``. Publishers on one host take an
exclusive `fcntl.flock` on ``<root>/<name>/.publish.lock`` while they pick the number and
rename. TF Serving ignores these non-numeric entries.

Example:
    >>> repository = ModelRepository(Path("var/models"))
    >>> version = repository.publish(
    ...     "cnn",
    ...     lambda folder: export_saved_model(model, folder, 224, model_name="cnn"),
    ...     {"input_size": 224},
    ... )
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mammo.errors import ModelRepositoryError

from models.export import check_saved_model

logger = logging.getLogger(__name__)

METADATA_FILE = Path("assets.extra") / "mammo_version.json"
HIGHEST_VERSION_FILE = ".highest_version"
LOCK_FILE = ".publish.lock"
STAGING_DIR = ".staging"

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


class ModelRepository:
    """Versions of each model under ``root``, in the folder layout TF Serving reads.

    Args:
        root: Repository folder; created on the first publish.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def model_dir(self, name: str) -> Path:
        """Return the folder holding the versions of model ``name``."""
        if not _MODEL_NAME.fullmatch(name):
            raise ValueError(
                "`name` must start with a letter or digit and contain only letters, digits, "
                f"'_' and '-'. Received: name={name!r}"
            )
        return self.root / name

    def versions(self, name: str) -> list[int]:
        """Return the published versions of ``name`` in ascending order.

        Only folders with an all-digit name count, as in TF Serving.
        """
        model_dir = self.model_dir(name)
        if not model_dir.is_dir():
            return []
        return sorted(
            int(entry.name)
            for entry in model_dir.iterdir()
            if entry.is_dir() and entry.name.isascii() and entry.name.isdigit()
        )

    def latest_version(self, name: str) -> int | None:
        """Return the highest published version of ``name``, or None if it has none."""
        versions = self.versions(name)
        return versions[-1] if versions else None

    def publish(self, name: str, write_export: Callable[[Path], object],
                metadata: dict[str, Any]) -> int:
        """Export, check and publish a new version of ``name``; return its number.

        Args:
            name: Model name, the folder under ``root``.
            write_export: Writes the SavedModel into the folder it is given, which exists
                and is empty. For example,
                ``lambda folder: export_saved_model(model, folder, size)``.
            metadata: JSON-serialisable facts stored with the version in
                ``assets.extra/mammo_version.json``. ``input_size`` is required, because the
                check needs it. ``weights_source`` and ``weights_warning`` are recorded
                as None if missing. The repository sets ``model_name``, ``version`` and
                ``created_at`` (UTC, ISO 8601) itself.

        Raises:
            ModelRepositoryError: if the export fails the contract check. The staging folder
                is removed and no version folder is created. Errors raised by
                ``write_export`` propagate unchanged, with the same cleanup.
        """
        model_dir = self.model_dir(name)
        input_size = metadata.get("input_size")
        if isinstance(input_size, bool) or not isinstance(input_size, int):
            raise ValueError(
                "`metadata['input_size']` must be the export's input size in pixels. "
                f"Received: {input_size!r}"
            )

        staging_root = self.root / STAGING_DIR
        staging_root.mkdir(parents=True, exist_ok=True)
        model_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=staging_root))
        try:
            write_export(staging)
            check_saved_model(staging, input_size)
            with self._publish_lock(name):
                version = self._issue_version(name)
                stored = {
                    **metadata,
                    "model_name": name,
                    "version": version,
                    "created_at": datetime.now(UTC).isoformat(),
                    "input_size": input_size,
                    "weights_source": metadata.get("weights_source"),
                    "weights_warning": metadata.get("weights_warning"),
                }
                _write_json(staging / METADATA_FILE, stored)
                target = model_dir / str(version)
                if target.exists():
                    raise ModelRepositoryError(
                        f"Cannot publish {name} version {version}: {target} already exists "
                        f"although {model_dir / HIGHEST_VERSION_FILE} was lower. Something "
                        "outside ModelRepository writes version folders; remove it and retry."
                    )
                # rename(2) within one file system is atomic, so TF Serving finds either no
                # folder or the complete version.
                os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        logger.info("Published %s version %d at %s", name, version, target)
        return version

    def version_metadata(self, name: str, version: int) -> dict[str, Any]:
        """Return the metadata stored with ``name`` version ``version``.

        Raises:
            ModelRepositoryError: if the version or its metadata file is missing or unreadable.
        """
        version_dir = self.model_dir(name) / str(version)
        if not version_dir.is_dir():
            raise ModelRepositoryError(
                f"Model {name} has no version {version} in {self.root}; "
                f"published versions: {self.versions(name)}"
            )
        metadata_path = version_dir / METADATA_FILE
        try:
            return json.loads(metadata_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ModelRepositoryError(
                f"Cannot read the metadata of {name} version {version} at {metadata_path}: "
                f"{error}"
            ) from error

    def list_all(self) -> list[dict[str, Any]]:
        """Return one entry per published model version, sorted by name and version.

        Each entry is the stored metadata plus ``model_name``, ``version`` and ``path``.
        A version without readable metadata (for example, copied in by hand) gets
        ``metadata_error`` with the reason instead.
        """
        if not self.root.is_dir():
            return []
        entries = []
        for model_dir in sorted(self.root.iterdir()):
            if not model_dir.is_dir() or not _MODEL_NAME.fullmatch(model_dir.name):
                continue
            for version in self.versions(model_dir.name):
                try:
                    entry = self.version_metadata(model_dir.name, version)
                except ModelRepositoryError as error:
                    entry = {"metadata_error": str(error)}
                entry.update(
                    model_name=model_dir.name,
                    version=version,
                    path=str(model_dir / str(version)),
                )
                entries.append(entry)
        return entries

    @contextmanager
    def _publish_lock(self, name: str) -> Iterator[None]:
        # The kernel releases a flock lock when its holder dies, so a crashed publisher does
        # not block the next one.
        # NOTE: flock does not exclude publishers on different hosts that share the
        # repository over NFS, so publish from one host only.
        with open(self.model_dir(name) / LOCK_FILE, "a+") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def _issue_version(self, name: str) -> int:
        """Record and return the next version number; call only while holding the lock."""
        highest_path = self.model_dir(name) / HIGHEST_VERSION_FILE
        highest = 0
        if highest_path.exists():
            text = highest_path.read_text(encoding="ascii").strip()
            if not text.isdigit():
                raise ModelRepositoryError(
                    f"{highest_path} must contain the highest version number issued; found "
                    f"{text!r}. Write the highest version that ever existed into it."
                )
            highest = int(text)
        # Folders count too, in case the file was lost or versions were copied in by hand.
        version = max([highest, *self.versions(name)]) + 1
        # The number is recorded before the rename, so a crash in between skips a number
        # instead of reusing one.
        _write_text_atomically(highest_path, f"{version}\n")
        return version


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_text_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f"{path.name}.tmp")
    with open(temporary, "w", encoding="ascii") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
