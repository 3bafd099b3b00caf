"""The README's Keras-habit and PyTorch-habit scripts run as written."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("marker", ["keras-habits", "torch-habits"])
def test_readme_script_runs_as_written(marker, tmp_path, monkeypatch, capsys):
    text = README.read_text(encoding="utf-8")
    m = re.search(rf"<!-- {marker} -->\s*```python\n(.*?)```", text, re.S)
    assert m, f"README has no script after <!-- {marker} -->"
    monkeypatch.chdir(tmp_path)       # the files the script writes land here
    exec(compile(m.group(1), f"README {marker}", "exec"), {})
    out = capsys.readouterr().out
    assert "accuracy" in out
    if marker == "keras-habits":
        assert (tmp_path / "best.fmlp").is_file() and (tmp_path / "training.csv").is_file()
