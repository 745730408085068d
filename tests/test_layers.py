"""The import graph follows the pipeline: data -> augment/mask -> models -> engine -> evaluation/explain -> the
commands. A lower layer that imports a higher one (even inside a function) is a back-arrow."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "sbssl"
LOWER = ["data", "synth", "augment", "masking", "models", "engine", "utils", "registry", "errors", "config"]
HIGHER = {"evaluation", "explain", "report", "reproduce", "predict", "export", "exported", "cli", "demo", "api",
          "workflow"}


def _imports(path: Path) -> set[str]:
    """The sbssl modules a file imports, as their first component below sbssl ("engine", "evaluation", ...)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
        out |= {n.split(".")[1] for n in names if n.startswith("sbssl.")}
    return out


def test_lower_layers_never_import_the_commands_or_evaluation():
    files = [p for name in LOWER for p in ([SRC / f"{name}.py"] if (SRC / f"{name}.py").exists()
                                           else sorted((SRC / name).rglob("*.py")))]
    assert len(files) > 40
    back = {str(p.relative_to(SRC)): sorted(_imports(p) & HIGHER) for p in files}
    assert {k: v for k, v in back.items() if v} == {}


def test_the_check_sees_a_back_arrow(tmp_path: Path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from sbssl.evaluation.metrics import exam_metrics\n")
    assert _imports(bad) & HIGHER == {"evaluation"}
