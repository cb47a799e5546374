"""The shape the code promises: a pure core without ldap3 or python-ldap, both only in
ldapquota/ldap, modules and functions of a size a reader can hold."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ldapquota"
MODULES = sorted(PACKAGE.rglob("*.py"))


# ldap3, and python-ldap (the packages ldap, _ldap and the module ldapurl).
LDAP_LIBRARIES = {"ldap3", "ldap", "_ldap", "ldapurl"}


def test_the_pure_core_loads_no_ldap_library():
    code = (
        "import sys, ldapquota.quota, ldapquota.maildirsize, ldapquota.evaluation, ldapquota.accounts, "
        "ldapquota.parallel, ldapquota.settings, ldapquota.sources.maildir; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(LDAP_LIBRARIES)}))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def _imports(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_only_the_ldap_package_imports_an_ldap_library(path):
    library_imports = [name for name in _imports(path) if name.split(".")[0] in LDAP_LIBRARIES]
    in_ldap_package = path.parent == PACKAGE / "ldap"
    assert in_ldap_package or not library_imports, f"{path.name} imports {library_imports}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_modules_and_functions_stay_readable(path):
    text = path.read_text()
    assert len(text.splitlines()) <= 430, f"{path.name}: {len(text.splitlines())} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            assert length <= 70, f"{path.name}: {node.name}() is {length} lines"
