"""The ESP's boot menu as the slots imply it (docs/boot-chain.md), and the
manifest keys that carry a slot's kernel."""

from __future__ import annotations

import struct

import pytest

from anklumed.errors import InvalidArgument
from anklumed.slots import boot_entries as be
from anklumed.slots.bundle import Manifest, parse_manifest
from anklumed.stick import SlotName

A, B = SlotName.A, SlotName.B
UUID = "0b4c6c8e-1111-2222-3333-444455556666"


def order(entries: dict[str, str]) -> list[str]:
    """The entries as systemd-boot orders them: by sort-key, those with no
    tries left at the end (the rule the fallback relies on)."""
    def key(name: str) -> tuple[bool, str]:
        sort_key = next(line.split()[1] for line in entries[name].splitlines()
                        if line.startswith("sort-key "))
        default = be.parse_default(name)
        return (default is not None and default.counter.exhausted, sort_key)
    return sorted(entries, key=key)


def test_the_default_boots_the_primary_and_the_other_slot_comes_second() -> None:
    entries = be.wanted_entries(B, {A, B}, 3, UUID)
    assert order(entries) == ["anklume-1-live-b+3-0.conf", "anklume-2-slot-a.conf",
                              "anklume-3-stick-b.conf", "anklume-4-slot-b.conf"]
    assert "linux /EFI/anklume/slot-b.efi" in entries["anklume-1-live-b+3-0.conf"]
    other = entries["anklume-2-slot-a.conf"]
    assert "linux /EFI/anklume/slot-a.efi" in other and "anklume.slot=A" in other
    for name, text in entries.items():
        assert f"anklume.persist=PARTUUID={UUID}" in text
        # What the boot loader picks alone reboots a panic (and counts it);
        # what only a person picks keeps the console.
        assert ("panic=10" in text) is name.startswith(("anklume-1-", "anklume-2-"))


def test_once_the_default_has_no_tries_left_the_other_slot_boots_first() -> None:
    entries = be.wanted_entries(A, {A, B}, 3, UUID)
    text = entries.pop("anklume-1-live-a+3-0.conf")
    entries["anklume-1-live-a+0-3.conf"] = text  # what systemd-boot renamed it to
    assert order(entries)[0] == "anklume-2-slot-b.conf"
    assert order(entries)[-1] == "anklume-1-live-a+0-3.conf"


def test_a_slot_without_a_kernel_has_no_entry() -> None:
    assert sorted(be.wanted_entries(A, {A}, 3, UUID)) == [
        "anklume-1-live-a+3-0.conf", "anklume-3-stick-a.conf", "anklume-4-slot-a.conf"]
    assert be.wanted_entries(B, {A}, 3, UUID) == {}


@pytest.mark.parametrize("attempts", [1, 3, 9, 10, 100])
def test_the_counter_is_one_digit_and_pre_initialised(attempts: int) -> None:
    """systemd-boot renames +L-D to +(L-1)-(D+1): the same length only when
    both are one digit and -D is there from the start (uapi-group#168)."""
    name = be.default_name(A, attempts)
    left = min(attempts, be.MAX_TRIES)
    assert name == f"anklume-1-live-a+{left}-0.conf"
    default = be.parse_default(name)
    assert default is not None and default.counter == be.Counter(left, 0)
    renamed = f"anklume-1-live-a+{left - 1}-1.conf"
    assert len(renamed) == len(name)


@pytest.mark.parametrize("name", ["anklume-1-live-a+3.conf", "anklume-1-live-c+3-0.conf",
                                  "anklume-1-live-a+10-0.conf", "anklume-2-slot-a.conf",
                                  "other-1-live-a+3-0.conf"])
def test_only_our_counted_default_entry_parses_as_one(name: str) -> None:
    assert be.parse_default(name) is None


def test_a_change_of_primary_writes_the_new_entries_before_deleting_the_old() -> None:
    present = list(be.wanted_entries(A, {A, B}, 3, UUID))
    present[0] = "anklume-1-live-a+1-2.conf"
    plan = be.plan(present, be.wanted_entries(B, {A, B}, 3, UUID), keep_counter=True)
    assert sorted(plan.write) == ["anklume-1-live-b+3-0.conf", "anklume-2-slot-a.conf",
                                  "anklume-3-stick-b.conf", "anklume-4-slot-b.conf"]
    assert plan.delete == ["anklume-1-live-a+1-2.conf", "anklume-2-slot-b.conf",
                           "anklume-3-stick-a.conf", "anklume-4-slot-a.conf"]


def test_the_used_counter_stays_unless_the_boot_is_marked_good() -> None:
    present = ["anklume-1-live-a+1-2.conf", "anklume-3-stick-a.conf", "anklume-4-slot-a.conf"]
    wanted = be.wanted_entries(A, {A}, 3, UUID)
    assert be.plan(present, wanted, keep_counter=True).empty
    renew = be.plan(present, wanted, keep_counter=False)
    assert list(renew.write) == ["anklume-1-live-a+3-0.conf"]
    assert renew.delete == ["anklume-1-live-a+1-2.conf"]


MANIFEST = ("FORMAT=1\nCOMPATIBLE=anklume-live-amd64\nVERSION=1.0.0\nIMAGE=x.squashfs\n"
            "SIZE=4096\nSHA256=" + "a" * 64 + "\nROOT_HASH=" + "b" * 64 + "\nSALT=00\n")


def test_a_manifest_may_pin_the_slots_kernel() -> None:
    m = parse_manifest((MANIFEST + f"UKI={be.UKI_IN_IMAGE}\nUKI_SIZE=123\n"
                        "UKI_SHA256=" + "c" * 64 + "\n").encode())
    assert (m.uki, m.uki_size, m.uki_sha256) == (be.UKI_IN_IMAGE, 123, "c" * 64)
    assert parse_manifest(m.to_text().encode()) == m
    assert parse_manifest(MANIFEST.encode()).uki is None  # older bundles still parse


@pytest.mark.parametrize("extra", [
    "UKI=usr/lib/anklume/boot/uki.efi\n",  # without its size and hash
    "UKI=../../etc/shadow\nUKI_SIZE=1\nUKI_SHA256=" + "c" * 64 + "\n",
    "UKI=/usr/uki.efi\nUKI_SIZE=1\nUKI_SHA256=" + "c" * 64 + "\n",
    "UKI=uki.efi\nUKI_SIZE=0\nUKI_SHA256=" + "c" * 64 + "\n",
    "UKI=uki.efi\nUKI_SIZE=1\nUKI_SHA256=" + "C" * 64 + "\n",
])
def test_a_half_or_odd_kernel_pin_refuses_the_bundle(extra: str) -> None:
    with pytest.raises(InvalidArgument, match="manifest"):
        parse_manifest((MANIFEST + extra).encode())


def test_the_manifest_model_knows_the_keys() -> None:
    assert {"uki", "uki_size", "uki_sha256"} <= set(Manifest.model_fields)


@pytest.mark.parametrize(("present", "booted", "gave_up"), [
    (["anklume-1-live-b+0-3.conf", "anklume-2-slot-a.conf"], A, True),
    (["anklume-1-live-b+1-2.conf", "anklume-2-slot-a.conf"], A, False),  # a person chose A
    (["anklume-1-live-b+0-3.conf"], B, False),  # B booted anyway (another entry): not a rollback
    (["anklume-1-live-a+0-3.conf"], A, False),  # an old entry of the other slot
    (["anklume-1-live-b+0-3.conf", "anklume-1-live-b+3-0.conf"], A, False),  # renewed
    ([], A, False),
])
def test_the_boot_loader_gave_up_only_when_the_primarys_tries_are_spent(
        present: list[str], booted: SlotName, gave_up: bool) -> None:
    assert be.fell_back(B, booted, present) is gave_up


def test_after_a_cut_renewal_the_fresher_counter_is_the_one_kept() -> None:
    """A renewal cut between its write and its delete leaves two default
    entries of one slot: a start keeps the one systemd-boot boots."""
    present = ["anklume-1-live-a+0-3.conf", "anklume-1-live-a+3-0.conf",
               "anklume-3-stick-a.conf", "anklume-4-slot-a.conf"]
    plan = be.plan(present, be.wanted_entries(A, {A}, 3, UUID), keep_counter=True)
    assert plan.write == {} and plan.delete == ["anklume-1-live-a+0-3.conf"]


@pytest.mark.parametrize(("name", "ours"), [
    ("anklume-1-live-a+3-0.conf", True), ("anklume-2-slot-b.conf", True),
    ("anklume-3-stick-a.conf", True), ("anklume-4-slot-a.conf", True),
    ("anklume-debug.conf", False), ("anklume-1-live-a.conf.bak", False),
    ("other.conf", False),
])
def test_an_entry_a_person_added_is_never_ours_to_delete(name: str, ours: bool) -> None:
    assert be.is_ours(name) is ours


# ---- the UKI's profiles: the command lines under the signature ---------------


def test_each_entry_names_the_profile_whose_command_line_is_its_own() -> None:
    """Under Secure Boot systemd-stub boots profile @N's .cmdline and drops the
    entry's words: the entry's words without what only the stick knows
    (PERSIST, the kernel's slot) must be that profile's, or the menu would
    mean something else with Secure Boot on."""
    desktops = ("sway", "labwc", "kde")
    table = be.profiles(desktops)
    for primary in SlotName:
        entries = be.wanted_entries(primary, set(SlotName), 3, UUID, desktops)
        assert len(entries) == 6
        for text in entries.values():
            options = next(line for line in text.splitlines() if line.startswith("options "))
            at, *words = options.removeprefix("options ").split()
            profile = table[int(at.removeprefix("@"))]
            kept = [w for w in words if not w.startswith(("anklume.persist=", "anklume.kernel="))]
            assert " ".join(kept) == profile.cmdline, (text, profile)
    assert len({p.cmdline for p in table}) == len(table)  # no two alike


def test_a_uki_without_profiles_gets_entries_without_a_profile() -> None:
    # systemd-stub refuses an @N its UKI lacks: an old slot's UKI keeps booting.
    entries = be.wanted_entries(SlotName.B, set(SlotName), 3, UUID,
                                          profiled={SlotName.B})
    for name, text in entries.items():
        old = "linux /EFI/anklume/slot-a.efi" in text
        assert ("options @" in text) is not old, (name, text)


def test_the_profiles_command_lines_read_back_from_a_pe_file() -> None:
    """A FAKE UKI (a PE header and its section table, no code) laid out as
    ukify lays out a multi-profile one: a profile without its own .cmdline
    takes the base one."""
    sections = [(".linux", b"kernel"), (".cmdline", b"base words\n"), (".profile", b"ID=0"),
                (".profile", b"ID=1"), (".cmdline", b"one\0"), (".profile", b"ID=2"),
                (".cmdline", b"two")]
    pe_at, table = 0x40, 0x40 + 24 + 0
    data_at = table + 40 * len(sections)
    head = bytearray(data_at)
    head[:2] = b"MZ"
    struct.pack_into("<I", head, 0x3C, pe_at)
    head[pe_at:pe_at + 4] = b"PE\0\0"
    struct.pack_into("<HH", head, pe_at + 4, 0x8664, len(sections))
    struct.pack_into("<H", head, pe_at + 20, 0)  # no optional header
    body = bytearray()
    for i, (name, content) in enumerate(sections):
        at = table + 40 * i
        head[at:at + 8] = name.encode().ljust(8, b"\0")
        struct.pack_into("<I", head, at + 8, len(content))
        struct.pack_into("<I", head, at + 20, data_at + len(body))
        body += content
    uki = bytes(head + body)
    assert be.profile_cmdlines(uki) == ["base words", "one", "two"]
    assert be.pe_section_names(uki[:data_at])[:3] == [".linux", ".cmdline", ".profile"]
    assert be.pe_sections(uki[:data_at - 1]) == []  # cut in its table
    assert be.profile_cmdlines(b"not a PE file") == []
