"""`mammo selftest` on the installed pixel data plugins."""

from __future__ import annotations

from mammo.cli import main


def test_selftest_lists_syntaxes(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MAMMO_DATA_DIR", str(tmp_path))

    assert main(["selftest"]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 13
    assert lines[0].split()[0] == "1.2.840.10008.1.2.1"
    assert "JPEG 2000 Image Compression (Lossless Only)" in lines[10]
    assert lines[-1] == "Pixel data self-test passed: all 12 transfer syntaxes decode."
