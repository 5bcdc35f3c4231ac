"""The dbus-fast version the fixes were checked against (dbus_fixes.apply)."""

import pytest

from anklumed.service import dbus_fixes


@pytest.mark.parametrize(("text", "parsed"), [
    ("2.44.1", (2, 44, 1)), ("2.46.4", (2, 46, 4)), ("3.0.0rc1", (3, 0, 0)),
    ("2.44.1.post1", (2, 44, 1)), ("0.2.3", (0, 2, 3)), ("dev", ()),
])
def test_version_tuple(text: str, parsed: tuple[int, ...]) -> None:
    assert dbus_fixes.version_tuple(text) == parsed


@pytest.mark.parametrize("version", ["2.44.0", "0.2.3", "3.0.0", "5.1.2", "dev"])
def test_an_untested_dbus_fast_is_refused(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    monkeypatch.setattr(dbus_fixes, "installed_version", version)
    with pytest.raises(RuntimeError, match=f"dbus-fast {version} is outside"):
        dbus_fixes.apply()


@pytest.mark.parametrize("version", ["2.44.1", "2.46.4", "2.99.0"])
def test_the_tested_range_is_accepted(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    monkeypatch.setattr(dbus_fixes, "installed_version", version)
    dbus_fixes.apply()  # applying twice is harmless: the same functions again
