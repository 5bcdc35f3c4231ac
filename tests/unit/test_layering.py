"""The daemon's layers (STYLE.md "House habits"), checked on the imports.

`anklumed/slots/` and `anklumed/data/` never import each other: what both
need lives at the package root. Only `anklumed/service/` knows D-Bus, so the
domain can be tested, and the bus library changed, without touching it.
`anklumed/core/` (the composition root) sits between them: it uses the
domain, and neither the bus nor the service layer; the domain does not know it.
The clients never import the daemon; the daemon imports one module of the
client library, the dbus-fast fixes every connection needs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "anklumed"
# dbus-next today, dbus-fast tomorrow: both names, so the move cannot slip one in.
DBUS_LIBRARIES = ("dbus_next", "dbus_fast")
CLIENT_FIXES = "anklume_client.dbus_fixes"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, absolute, wherever the import statement sits."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def offending(entry: Path, forbidden: tuple[str, ...]) -> list[str]:
    """Imports of a forbidden package in a file, or in every file under a directory."""
    paths = sorted(entry.rglob("*.py")) if entry.is_dir() else [entry]
    return [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in paths
        for module in sorted(imported_modules(path))
        if any(within(module, name) for name in forbidden)
    ]


@pytest.mark.parametrize(("layer", "other"), [("slots", "data"), ("data", "slots")])
def test_slots_and_data_never_import_each_other(layer: str, other: str) -> None:
    assert list((PACKAGE / layer).glob("*.py")), f"no module in anklumed/{layer}"
    assert offending(PACKAGE / layer, (f"anklumed.{other}",)) == []


def test_only_the_service_layer_imports_the_dbus_library() -> None:
    outside = [
        line
        for entry in sorted(PACKAGE.iterdir())
        if entry.name != "service" and (entry.is_dir() or entry.suffix == ".py")
        for line in offending(entry, DBUS_LIBRARIES)
    ]
    assert outside == []


def test_the_core_knows_neither_the_bus_nor_the_service_layer() -> None:
    assert list((PACKAGE / "core").glob("*.py")), "no module in anklumed/core"
    assert offending(PACKAGE / "core", (*DBUS_LIBRARIES, "anklumed.service")) == []


@pytest.mark.parametrize("layer", ["slots", "data"])
def test_the_domain_does_not_know_the_core(layer: str) -> None:
    assert offending(PACKAGE / layer, ("anklumed.core", "anklumed.service")) == []


def test_the_checker_sees_the_imports_it_looks_for() -> None:
    # Without this the tests above would pass on a parser that found nothing.
    assert "anklumed.stick" in imported_modules(PACKAGE / "slots" / "model.py")
    assert "anklumed.data.poolconf" in imported_modules(PACKAGE / "data" / "manager.py")
    assert any("dbus_" in line for line in offending(PACKAGE / "service", DBUS_LIBRARIES))
    assert "anklumed.slots.controller" in imported_modules(PACKAGE / "core" / "system.py")
    assert CLIENT_FIXES in imported_modules(PACKAGE / "service" / "dbus_fixes.py")


def test_the_desktop_clients_never_import_the_daemon() -> None:
    # A user-session program reaches anklumed over the bus only: importing it
    # would pull root-side code (and the daemon's dbus-fast patches, for a
    # side that answers calls) into the session.
    desktop = ROOT / "anklume_desktop"
    assert list(desktop.glob("*.py")), "no module in anklume_desktop"
    assert offending(desktop, ("anklumed",)) == []


def test_the_client_library_imports_nothing_of_the_daemon_or_the_cli() -> None:
    # A desktop client installs it alone: it may need dbus-fast, not anklumed.
    client = ROOT / "anklume_client"
    assert list(client.glob("*.py")), "no module in anklume_client/"
    assert offending(client, ("anklumed", "anklumectl")) == []
    assert "anklume_client.interface" in imported_modules(client / "proxies.py")


def test_the_daemon_imports_only_the_dbus_fixes_of_the_client_library() -> None:
    # Both sides need the fixes for dbus-fast's connections, and the client
    # library is installed wherever the daemon is (anklume_image/install.py).
    # Anything else of it is the clients' view of the API: the daemon defines
    # the API, it does not read it through its clients.
    fixes_only = ({CLIENT_FIXES}, {"anklume_client", CLIENT_FIXES})  # import …, from … import
    uses = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        client = {m for m in imported_modules(path) if within(m, "anklume_client")}
        if client and client not in fixes_only:
            uses[str(path.relative_to(ROOT))] = sorted(client)
    assert uses == {}
