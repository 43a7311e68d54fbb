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
