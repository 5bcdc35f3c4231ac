"""The interface ``org.anklume.Live1`` as this library knows it.

``dbus/org.anklume.Live1.xml`` is the one definition (generated from the
running daemon); tests/unit/test_client_interface.py checks that these
tables name every member of it with its signature, and nothing it lacks.
``ADDED`` says which revision brought a member: a daemon of an older
revision lacks it, and the library falls back (properties.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

BUS_NAME = "org.anklume.Live1"
ROOT_PATH = "/org/anklume/Live1"
DATA_PATH = f"{ROOT_PATH}/data"
SLOT_PREFIX = f"{ROOT_PATH}/slot/"
JOB_PREFIX = f"{ROOT_PATH}/job/"
ERROR_PREFIX = f"{BUS_NAME}.Error."
PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"
# The revision a daemon without ``InterfaceRevision`` speaks.
FIRST_REVISION = 1


@dataclass(frozen=True)
class Interface:
    name: str
    properties: dict[str, str]  # name → signature
    methods: dict[str, tuple[str, str]] = field(default_factory=dict)  # name → (in, out)
    signals: dict[str, str] = field(default_factory=dict)  # name → signature
    added: dict[str, int] = field(default_factory=dict)  # member → revision, when not 1


MANAGER = Interface(
    f"{BUS_NAME}.Manager",
    properties={
        "InterfaceRevision": "u", "Version": "s", "BootedSlot": "s", "PrimarySlot": "s",
        "FallbackSlot": "s", "BootCount": "u", "BootAttempts": "u", "BootState": "s",
        "MarkedGood": "b", "StateReasons": "as", "StateReasonCodes": "as", "Problems": "as",
        "ProblemCodes": "as", "LastRollback": "a{ss}", "LastUpdate": "a{ss}",
        "HandoffSource": "s", "Toram": "s", "RootInRam": "s", "Verity": "s", "BootDisk": "s",
        "BootMediaPresent": "b", "SafeToRemove": "b", "Partitions": "a(suts)",
        "PartitionRecords": "aa{sv}", "MemoryEncryption": "s", "RamCryptRequested": "b",
        "BootDeadline": "i", "Jobs": "ao",
    },
    methods={
        "Update": ("ssb", "o"), "UpdateFromFiles": ("ha{sv}", "o"), "MarkGood": ("", ""),
        "Rollback": ("b", "s"), "SetPrimary": ("sb", ""), "MarkBad": ("s", ""),
    },
    added={"InterfaceRevision": 2, "StateReasonCodes": 2, "ProblemCodes": 2,
           "PartitionRecords": 2},
)

SLOT = Interface(
    f"{BUS_NAME}.Slot",
    properties={
        "Name": "s", "Status": "s", "Version": "s", "Size": "t", "Sha256": "s",
        "RootHash": "s", "Salt": "s", "DataBlockSize": "u", "HashBlockSize": "u",
        "HashAlg": "s", "InstalledAt": "s", "ActivatedAt": "s", "LastGoodAt": "s",
        "Source": "s", "Booted": "b", "Primary": "b", "Device": "s", "PartitionSize": "t",
    },
)

DATA_DISK = Interface(
    f"{BUS_NAME}.DataDisk",
    properties={
        "State": "s", "Pool": "s", "Backend": "s", "Encryption": "s", "LuksUuid": "s",
        "Device": "s", "Mounts": "a{ss}", "Message": "s", "MessageCode": "s", "Pulled": "b",
        "AttemptsLeft": "u", "Candidates": "a(ssstssss)", "CandidateDisks": "aa{sv}",
        "Adoptable": "a(sss)", "AdoptableDisks": "aa{sv}", "DisksProbed": "b",
        "LastJob": "a{ss}", "Filesystems": "as",
    },
    methods={
        "Setup": ("ssssay", "o"), "Adopt": ("say", "o"), "Unlock": ("ay", "o"),
        "Lock": ("b", "o"), "ChangePassphrase": ("ayay", ""), "AddRecoveryKey": ("ay", "ay"),
        "Refresh": ("", ""),
    },
    added={"MessageCode": 2, "CandidateDisks": 2, "AdoptableDisks": 2, "Filesystems": 3},
)

JOB = Interface(
    f"{BUS_NAME}.Job",
    properties={
        "Kind": "s", "State": "s", "Phase": "s", "BytesDone": "t", "BytesTotal": "t",
        "Rate": "t", "Eta": "i", "Cancellable": "b", "Result": "s", "ErrorName": "s",
        "ErrorCode": "s", "Message": "s",
    },
    methods={"Cancel": ("", "b")},
    signals={"Finished": "sss"},
    added={"ErrorCode": 2},
)

INTERFACES = (MANAGER, SLOT, DATA_DISK, JOB)
