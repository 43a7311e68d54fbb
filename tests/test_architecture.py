"""House rules that keep the code base in shape (STYLE.md conventions 1 and 8)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import prompts

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "editing": {"gradio", "sqlite3", "sqlite_utils", "storage", "agents", "app"},
    "storage": {"torch", "gradio", "transformers", "editing", "agents", "app"},
    "agents": {"gradio", "app"},
    "runtime": {"gradio", "agents", "storage", "app"},
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_one_way_imports(package):
    for path in (ROOT / package).rglob("*.py"):
        bad = imports_of(path) & FORBIDDEN[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_only_app_imports_gradio():
    for path in ROOT.rglob("*.py"):
        if ".venv" in path.parts or "tests" in path.parts or path.name == "app.py":
            continue
        assert "gradio" not in imports_of(path), path


def test_every_referenced_prompt_exists_and_renders():
    referenced = set()
    for path in ROOT.rglob("*.py"):
        if ".venv" in path.parts:
            continue
        text = path.read_text(encoding="utf-8")
        referenced |= set(re.findall(r'prompts\.(?:load|render)\(\s*f?"([a-z_{}]+)"', text))
    expanded = set()
    for name in referenced:
        expanded |= {name.replace("{language_of(message)}", lang).replace("{lang}", lang)
                     .replace("{language_of(text)}", lang) for lang in ("en", "zh")}
    assert expanded, "no prompt references found"
    for name in expanded:
        assert name in prompts.names(), f"prompt {name!r} is referenced but missing"
    for lang in ("en", "zh"):
        text = prompts.render(f"intent_{lang}", answer="A", message="B")
        assert "{" in text and "B" in text  # the JSON braces survive formatting


def test_every_public_api_name_is_documented():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    app = (ROOT / "app.py").read_text(encoding="utf-8")
    public = set(re.findall(r'api_name="([a-z_]+)"\)', app))
    public |= set(re.findall(r'api_name="([a-z_]+)",\s*\n?\s*\)', app))
    for block in re.findall(r"\.(?:click|submit|change|select|load)\((.*?)\)\n", app, re.S):
        m = re.search(r'api_name="([a-z_]+)"', block)
        if m and "private" not in block:
            public.add(m.group(1))
    assert {"chat", "clean", "apply_edit", "cancel_edit", "list_edits", "revert_edit", "save_checkpoint"} <= public
    for name in public:
        assert f"`{name}`" in readme, f"api_name {name} is not documented in README.md"


# -- the engine's folders say what it is (README, "How it works") ------------------------------

VOCABULARY = {"editing.request", "editing.errors", "editing.spec", "editing.delta", "editing.hparams", "editing.facts",
              "editing.fingerprint"}
MAY_IMPORT = {  # what each part of editing/ may import from editing itself
    "vocabulary": VOCABULARY,
    "machinery": VOCABULARY | {"editing.machinery"},
    "methods": VOCABULARY | {"editing.machinery"},
    "inspection": VOCABULARY | {"editing.machinery", "editing.inspection"},
    "engine": VOCABULARY | {"editing.machinery", "editing.methods", "editing.inspection"},
    "evaluation": VOCABULARY | {"editing.machinery", "editing.methods", "editing.inspection", "editing.engine",
                                "editing.evaluation"},
}


def editing_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
        found |= {n for n in names if n.startswith("editing.")}
    return found


def part_of(path: Path) -> str:
    rel = path.relative_to(ROOT / "editing")
    if len(rel.parts) > 1:
        return rel.parts[0]
    return {"engine.py": "engine", "__main__.py": "evaluation", "evaluate.py": "evaluation"}.get(rel.name, "vocabulary")


def test_editing_layers_import_downwards_only():
    for path in (ROOT / "editing").rglob("*.py"):
        part = part_of(path)
        allowed = MAY_IMPORT[part]
        for name in editing_imports(path):
            ok = any(name == a or name.startswith(a + ".") for a in allowed)
            if part == "methods" and name.startswith("editing.methods"):
                ok = False  # methods stand side by side; what they share lives in machinery
            assert ok, f"{path.relative_to(ROOT)} ({part}) imports {name}"
    assert {p.name for p in (ROOT / "editing").iterdir() if p.is_dir() and p.name != "__pycache__"} == \
        {"machinery", "methods", "inspection", "evaluation"}


def test_hooks_go_through_the_one_hook_utility():
    for path in ROOT.rglob("*.py"):
        if ".venv" in path.parts or path.name == "hooks.py" or "tests" in path.parts:
            continue
        text = path.read_text(encoding="utf-8")
        assert "register_forward" not in text and "register_full_backward" not in text, path


def test_importing_has_no_side_effects():
    """Every module of the product imports without touching the environment, the logging setup,
    a random seed or matplotlib's backend (checked in a fresh interpreter)."""
    import subprocess
    import sys

    modules = sorted({".".join(p.relative_to(ROOT).with_suffix("").parts) for package in
                      ("editing", "agents", "storage", "runtime", "prompts", "bench")
                      for p in (ROOT / package).rglob("*.py")} - {"editing.__main__"})
    script = f"""
import importlib, logging, os, sys
import torch
rng = torch.random.get_rng_state()
env = dict(os.environ)
handlers = list(logging.getLogger().handlers)
for name in {modules!r}:
    importlib.import_module(name.removesuffix(".__init__"))
assert dict(os.environ) == env, set(os.environ.items()) ^ set(env.items())
assert logging.getLogger().handlers == handlers, "logging was configured"
assert "matplotlib.pyplot" not in sys.modules, "pyplot imported"
assert torch.equal(torch.random.get_rng_state(), rng), "the random state changed"
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]


def test_readme_is_a_front_door_and_its_records_are_linked():
    """How to start is on the first screen; every record under docs/ is linked from the README,
    every link and picture there exists, and the README stays short."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_screen = "\n".join(readme.splitlines()[:40])
    assert "make run" in first_screen and "make test" in first_screen
    assert len(readme.splitlines()) < 400
    records = {p.name for p in (ROOT / "docs").glob("*.md")}
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)", readme))
    assert records and records == linked, f"not linked: {records - linked}; missing: {linked - records}"
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)", page.read_text(encoding="utf-8")):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), f"{page.name} links to a missing {target}"
