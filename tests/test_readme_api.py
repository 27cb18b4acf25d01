"""The Python API's notebook example runs as written (the first ``python`` block of
docs/python-api.md, which the README links), and the package's public names resolve."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _example() -> str:
    text = (ROOT / "docs" / "python-api.md").read_text()
    section = text.split("\n### ", 1)[0]  # before "Your own model in a notebook"
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "docs/python-api.md has no python block before its first subsection"
    return blocks[0]


def test_readme_notebook_example_runs(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(ROOT)  # the example names a shipped checkpoint by its path in the tree
    monkeypatch.setenv("NORMSHAPE_HOME", str(tmp_path))
    namespace: dict = {}
    exec(compile(_example(), "docs/python-api.md", "exec"), namespace)
    df = namespace["df"]
    assert set(df["classified_with"].str.split().str[0]) == {"PN", "shaped"}
    assert ((df["robust_acc"] >= 0) & (df["robust_acc"] <= df["clean_acc"] + 1e-9)).all()
    out = capsys.readouterr().out
    assert "1:0: statistics move" in out and "1:3: statistics move" in out
    # the app's figures, drawn without Streamlit: titles, axis titles, the expected traces
    for name in ("regions_pn", "regions_shaped", "drift"):
        fig = namespace[name]
        assert fig.layout.title.text and fig.layout.xaxis.title.text and \
            fig.layout.yaxis.title.text, name
    assert [t.type for t in namespace["regions_pn"].data[:2]] == ["heatmap", "contour"]
    assert [t.name for t in namespace["drift"].data] == ["batch 1:0", "batch 1:3"]


def test_public_names_resolve_and_the_import_stays_light():
    code = ("import sys, normshape_core as n\n"
            "assert 'torch' not in sys.modules, 'importing normshape_core loaded torch'\n"
            "missing = [k for k in n.__all__ if getattr(n, k, None) is None]\n"
            "assert not missing, missing\n"
            "for k in ('load_checkpoint', 'evaluate', 'worst_case', 'diagnose', 'train',\n"
            "          'TrainConfig', 'EvalSettings', 'Trainer', 'moving_target'):\n"
            "    assert k in n.__all__, k\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
