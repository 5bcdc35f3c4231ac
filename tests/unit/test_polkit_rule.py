"""The live user's polkit rule (polkit/50-org.anklume.live1.rules) against the
policy and the image's group; polkitd's verdicts on it are the VM tier's
(tests/vm/test_polkit_rule_vm.py)."""

from __future__ import annotations

import re
from pathlib import Path

from anklume_image import install
from anklume_image.config import BuildConfig, Desktop

POLKIT = Path(__file__).resolve().parents[2] / "polkit"
RULE = (POLKIT / install.POLKIT_RULE).read_text()
POLICY = (POLKIT / "org.anklume.live1.policy").read_text()
POLICY_ACTIONS = re.findall(r'<action id="([^"]+)"', POLICY)


def test_the_rule_grants_exactly_the_policys_actions_by_name() -> None:
    """A new action is not granted until someone decides it here."""
    listed = re.search(r"var granted = \[(.*?)\];", RULE, re.S)
    assert listed is not None
    assert re.findall(r'"([^"]+)"', listed.group(1)) == POLICY_ACTIONS
    assert len(POLICY_ACTIONS) == 5
    assert "indexOf(\"org.anklume" not in RULE  # no grant by prefix


def test_the_rule_asks_for_the_group_and_a_local_active_session() -> None:
    conditions = re.findall(r"if \((subject\.[^{]*)\) \{\s*return polkit\.Result\.(\w+)", RULE)
    assert conditions == [("subject.local && subject.active && "
                           f'subject.isInGroup("{install.ADMIN_GROUP}")', "YES")]
    assert RULE.count("polkit.Result.YES") == 1


def test_every_image_gets_the_rule_and_the_group_and_the_live_user_is_in_it(
        tmp_path: Path) -> None:
    hooks = install.system_hooks(POLKIT.parent)
    assert f"copy-in {POLKIT / install.POLKIT_RULE} /usr/share/polkit-1/rules.d" in hooks
    assert f'chroot "$1" groupadd --system {install.ADMIN_GROUP}' in hooks
    assert install.ADMIN_GROUP in install.LIVE_USER_GROUPS.split(",")
    # The group exists before the live user is made a member of it.
    sway = BuildConfig(out=tmp_path / "x.img", desktop=Desktop.SWAY, zfs=False)
    every = install.customize_hooks(sway, POLKIT.parent)
    useradd = next(h for h in every if "useradd" in h)
    groupadd = f'chroot "$1" groupadd --system {install.ADMIN_GROUP}'
    assert every.index(groupadd) < every.index(useradd)
