"""anklume_client with a daemon of another revision: what revision 2 added
is derived from the old members, and what is lacking is named."""

from __future__ import annotations

import pytest

from anklume_client import words
from anklume_client.errors import DISCONNECTED, INCOMPATIBLE, ClientError, ExitCode
from anklume_client.interface import DATA_DISK, JOB, MANAGER
from anklume_client.models import DataDiskStatus, ManagerStatus, Note
from anklume_client.properties import complete
from anklumed.errors import ALL_ERRORS, AnklumeError
from anklumed.persist import PersistFull

REVISION_1_MANAGER = {"BootState": "rolled-back", "StateReasons": ["rolled back from slot B"],
                      "Problems": ["a", "b"],
                      "Partitions": [["ANKLUME-PERSIST", 5, 1 << 28, "/dev/sdb5"]]}


def test_revision_2_members_come_from_the_old_ones() -> None:
    props = complete(MANAGER, REVISION_1_MANAGER)
    assert set(MANAGER.added) <= props.missing
    status = ManagerStatus.from_properties(props)
    assert status.revision == 1
    assert status.reasons == (Note("", "rolled back from slot B"),)
    assert [n.code for n in status.problems] == ["", ""]
    assert status.partitions[0].label == "ANKLUME-PERSIST" and status.partitions[0].number == 5


def test_candidate_disks_come_from_the_candidates_tuples() -> None:
    row = ["sdc", "/dev/sdc", "Disk", 1 << 34, "usb", "X1", "gpt partition table; sdc1: ext4",
           "sdc1 is mounted"]
    status = DataDiskStatus.from_properties(complete(DATA_DISK, {
        "Candidates": [row], "Adoptable": [["/dev/sdd", "pool", "uuid"]]}))
    (disk,) = status.candidates
    assert (disk.device, disk.size, disk.refused, disk.usable) == (
        "/dev/sdc", 1 << 34, "sdc1 is mounted", False)
    assert disk.contents == ("gpt partition table", "sdc1: ext4")
    assert status.adoptable[0].pool == "pool" and status.message is None


@pytest.mark.parametrize("error", ALL_ERRORS, ids=lambda e: e.__name__)
def test_a_revision_1_jobs_error_code_is_its_error_classes(error: type[AnklumeError]) -> None:
    # The fallback from ErrorName is the code a revision-2 daemon sends for it.
    props = complete(JOB, {"State": "failed", "ErrorName": error.dbus_suffix})
    assert props["ErrorCode"] == error("x").code and props["ErrorCode"] in words.ERRORS


def test_a_finer_code_has_its_words_and_an_unknown_one_the_daemons() -> None:
    assert words.sentence(Note(PersistFull("x").code, "PERSIST is full"), words.ERRORS) \
        == "the boot stick is full"
    assert words.sentence(Note("new-in-revision-9", "what the daemon says"), words.ERRORS) \
        == "what the daemon says"


def test_a_lacking_property_is_one_sentence_with_its_exit_code() -> None:
    props = complete(MANAGER, {})
    with pytest.raises(ClientError) as lacking:
        props.need("BootState", "Version", purpose="boot-check")
    assert lacking.value.name == INCOMPATIBLE
    assert words.explain(lacking.value) == (
        "anklumed does not publish BootState, Version, which boot-check needs: anklumectl "
        "and anklumed are from different versions; update them together",
        ExitCode.INCOMPATIBLE)
    assert words.explain(ClientError(DISCONNECTED, "lost"))[1] == ExitCode.DISCONNECTED
    complete(MANAGER, REVISION_1_MANAGER).need("BootState", purpose="boot-check")
