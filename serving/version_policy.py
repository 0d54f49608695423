"""Find a model's ready version folders and choose which of them to serve.

A version folder is ready when its name is a non-negative integer and it contains
``saved_model.pb``. Everything else under the model folder is ignored: ``.staging/`` and other
names that are not integers, such as ``.highest_version``, and integer folders that are still
missing ``saved_model.pb``. The model repository publishes a version by renaming a finished
folder into place, so a ready folder is complete when it appears.
"""

from __future__ import annotations

from pathlib import Path

from serving.model_config import VersionPolicy

SAVED_MODEL_FILENAME = "saved_model.pb"


def list_ready_versions(model_dir: Path) -> list[int]:
    """Return the ready version numbers under ``model_dir`` in ascending order.

    A missing or unreadable ``model_dir`` has no versions.
    """
    try:
        entries = list(Path(model_dir).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []

    versions = []
    for entry in entries:
        # str.isdigit also accepts digits such as "²", which int() rejects.
        if not (entry.name.isascii() and entry.name.isdigit()):
            continue
        if (entry / SAVED_MODEL_FILENAME).is_file():
            versions.append(int(entry.name))
    return sorted(versions)


def select_versions(policy: VersionPolicy, ready_versions: list[int]) -> set[int]:
    """Return the versions that ``policy`` serves among ``ready_versions``.

    The rules follow TF Serving's ServableVersionPolicy: ``latest`` serves the
    ``num_versions`` highest versions (1 when unset or 0, and also when no policy is set),
    ``all`` serves every version, and ``specific`` serves the listed versions that exist.
    """
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return set(ready_versions)
    if choice == "specific":
        return set(policy.specific.versions) & set(ready_versions)

    count = policy.latest.num_versions if choice == "latest" else 0
    count = max(count, 1)
    return set(sorted(ready_versions)[-count:])
