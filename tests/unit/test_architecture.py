"""Architecture rules that the code must keep: imports point inward; every column is in the data inventory."""

from __future__ import annotations

import ast
from pathlib import Path

import credits

ROOT = Path(credits.__file__).parent
WEB_LAYER = ("api.py", "views.py")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_models_and_services_never_import_flask():
    offenders = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] == "web" or path.name in WEB_LAYER or rel.as_posix() in ("__init__.py", "cli.py"):
            continue
        if rel.parts[-1] == "cli.py" or "cli" in rel.parts:
            continue
        flask_imports = {n for n in _imports(path) if n == "flask" or n.startswith(("flask.", "flask_", "werkzeug"))}
        if flask_imports:
            offenders.append(f"{rel}: {sorted(flask_imports)}")
    assert offenders == [], "Flask imported outside the web layer:\n" + "\n".join(offenders)


def test_A1_every_model_column_is_in_the_data_inventory():
    from credits.models import metadata
    from credits.privacy.inventory import INVENTORY, unclassified

    missing = unclassified(metadata)
    assert missing == [], "columns missing from credits/privacy/inventory.py:\n" + "\n".join(missing)
    known = {f"{t.name}.{c.name}" for t in metadata.sorted_tables for c in t.columns}
    stale = sorted(set(INVENTORY) - known)
    assert stale == [], f"inventory entries for columns that no longer exist: {stale}"


def test_A1_personal_columns_say_what_erasure_does():
    from credits.privacy.inventory import INVENTORY

    for name, e in INVENTORY.items():
        if e.category != "operational":
            assert e.erasure != "none", f"{name} holds {e.category} data but erasure does nothing"
            assert e.purpose and e.legal_basis and e.retention, name
