"""Properties read tolerantly: what a daemon of another revision lacks is
filled in, never a KeyError.

A member added in a later revision (interface.ADDED) is derived from the
older members it stands beside (codes from nothing: empty, so the plain
words fall back to the daemon's sentence; records from tuples). Any other
member a daemon lacks gets its type's empty value and is listed in
``missing``: a caller whose decision needs it says so with ``need``, in one
sentence (exit code 13), instead of deciding on an empty value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from anklume_client.errors import INCOMPATIBLE, ClientError, code_of
from anklume_client.interface import DATA_DISK, FIRST_REVISION, JOB, MANAGER, Interface


def empty(signature: str) -> Any:
    if signature.startswith("a{"):
        return {}
    return {"s": "", "o": "/", "b": False, "d": 0.0, "a": [], "(": [], "v": None}.get(
        signature[0], 0)


def _parallel(texts: str) -> Callable[[dict[str, Any]], list[str]]:
    """No code for each sentence: the plain words show the daemon's sentence."""
    return lambda props: [""] * len(props[texts])


def _partition_records(props: dict[str, Any]) -> list[dict[str, Any]]:
    return [dict(zip(("label", "number", "size", "device"), row, strict=False))
            for row in props["Partitions"]]


CANDIDATE_FIELDS = ("name", "device", "model", "size", "bus", "serial", "contents", "refused")


def _candidate_disks(props: dict[str, Any]) -> list[dict[str, Any]]:
    records = []
    for row in props["Candidates"]:
        record: dict[str, Any] = {"by_id": "", "refused_code": "",
                                  **dict(zip(CANDIDATE_FIELDS, row, strict=False))}
        record["contents"] = [c for c in str(record.get("contents", "")).split("; ") if c]
        records.append(record)
    return records


def _adoptable_disks(props: dict[str, Any]) -> list[dict[str, Any]]:
    return [dict(zip(("device", "pool", "luks_uuid"), row, strict=False))
            for row in props["Adoptable"]]


def _error_code(props: dict[str, Any]) -> str:
    """A revision-1 job has only ErrorName: its class's code (IncorrectPassphrase
    → incorrect-passphrase), which is what a revision-2 daemon sends too when
    the raise site gives no finer one."""
    return code_of(str(props["ErrorName"]))


FALLBACKS: dict[tuple[str, str], Callable[[dict[str, Any]], Any]] = {
    (MANAGER.name, "InterfaceRevision"): lambda props: FIRST_REVISION,
    (MANAGER.name, "StateReasonCodes"): _parallel("StateReasons"),
    (MANAGER.name, "ProblemCodes"): _parallel("Problems"),
    (MANAGER.name, "PartitionRecords"): _partition_records,
    (DATA_DISK.name, "MessageCode"): lambda props: "",
    (DATA_DISK.name, "CandidateDisks"): _candidate_disks,
    (DATA_DISK.name, "AdoptableDisks"): _adoptable_disks,
    # A daemon before revision 3 does not say: what it always took, its
    # default first; its Setup refuses ZFS where zpool is missing.
    (DATA_DISK.name, "Filesystems"): lambda props: ["btrfs", "zfs"],
    (JOB.name, "ErrorCode"): _error_code,
}


class Properties(dict[str, Any]):
    """An interface's properties by name, complete; ``missing`` names those
    the daemon did not send (filled with a fallback or an empty value)."""

    def __init__(self, values: dict[str, Any], missing: frozenset[str],
                 interface: Interface) -> None:
        super().__init__(values)
        self.missing = missing
        self.interface = interface

    def need(self, *names: str, purpose: str) -> None:
        """Refuse to go on when the daemon lacks one of ``names``."""
        lacking = [name for name in names if name in self.missing]
        if lacking:
            raise ClientError(INCOMPATIBLE, f"anklumed does not publish {', '.join(lacking)}, "
                              f"which {purpose} needs: anklumectl and anklumed are from "
                              "different versions; update them together")


def complete(interface: Interface, sent: dict[str, Any]) -> Properties:
    """``sent`` (a GetAll reply) with every member of ``interface``; members
    this library does not know (a newer daemon's) are kept as they came."""
    values = dict(sent)
    missing = frozenset(name for name in interface.properties if name not in sent)
    for name in sorted(missing, key=lambda n: (interface.name, n) in FALLBACKS):
        fallback = FALLBACKS.get((interface.name, name))
        # The derived ones last: they read the members they stand beside.
        values[name] = fallback(values) if fallback else empty(interface.properties[name])
    return Properties(values, missing, interface)
