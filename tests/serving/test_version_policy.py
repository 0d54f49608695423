"""Tests of serving.version_policy: ready version folders and version policies."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format

from serving.model_config import VersionPolicy
from serving.version_policy import list_ready_versions, select_versions


def policy(text: str) -> VersionPolicy:
    return text_format.Parse(text, VersionPolicy())


class TestListReadyVersions:
    def test_only_integer_folders_with_saved_model(self, tmp_path: Path) -> None:
        for name in ("1", "2", "10", ".staging", "latest", "٣"):
            (tmp_path / name).mkdir()
            (tmp_path / name / "saved_model.pb").write_bytes(b"")
        (tmp_path / "3").mkdir()  # still being written: no saved_model.pb yet
        (tmp_path / ".highest_version").write_text("10")
        (tmp_path / "4").write_text("a file, not a folder")

        assert list_ready_versions(tmp_path) == [1, 2, 10]

    def test_missing_folder_has_no_versions(self, tmp_path: Path) -> None:
        assert list_ready_versions(tmp_path / "absent") == []


class TestSelectVersions:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("", {7}),
            ("latest { }", {7}),
            ("latest { num_versions: 1 }", {7}),
            ("latest { num_versions: 2 }", {3, 7}),
            ("latest { num_versions: 9 }", {1, 3, 7}),
            ("all { }", {1, 3, 7}),
            ("specific { versions: 3 versions: 5 }", {3}),
        ],
    )
    def test_policy_selects_versions(self, text: str, expected: set[int]) -> None:
        assert select_versions(policy(text), [1, 3, 7]) == expected

    def test_no_ready_versions_selects_none(self) -> None:
        assert select_versions(policy("latest { num_versions: 1 }"), []) == set()
