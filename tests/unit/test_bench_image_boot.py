"""bench/image_boot.py's reading of the guest's report and its verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import image_boot
from bench.image_boot import PLAIN, SHIPPED, SHIPPED_ENTRY, Times


def report_with(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"entry_selected": SHIPPED_ENTRY, "cmdline": "boot=anklume",
                            "boot_env": {"SLOT": "A", "VERITY": "signed", "TORAM": "0"}}
    return {**base, **fields}


def test_the_targets_are_read_from_systemctl_shows_blocks() -> None:
    out = ("Id=basic.target\nActiveEnterTimestampMonotonic=12000000\n\n"
           "Id=multi-user.target\nActiveEnterTimestampMonotonic=31500000\n")
    report = {"commands": {"targets": {"rc": 0, "stdout": out}}}
    assert image_boot.target_times(report) == {"basic.target": 12_000_000,
                                               "multi-user.target": 31_500_000}


def test_a_shipped_boot_that_copied_to_ram_or_was_not_verified_is_refused() -> None:
    image_boot.check_way(SHIPPED, report_with())
    for env in ({"SLOT": "A", "VERITY": "signed", "TORAM": "1"},
                {"SLOT": "A", "VERITY": "off", "TORAM": "0"}, None):
        with pytest.raises(SystemExit):
            image_boot.check_way(SHIPPED, report_with(boot_env=env))


def test_a_plain_boot_through_the_anklume_hook_is_refused() -> None:
    plain = report_with(entry_selected=image_boot.PLAIN_ENTRY, boot_env=None,
                        cmdline="root=PARTUUID=x rootfstype=squashfs ro")
    image_boot.check_way(PLAIN, plain)
    with pytest.raises(SystemExit):
        image_boot.check_way(PLAIN, {**plain, "boot_env": {"SLOT": "A"}})
    with pytest.raises(SystemExit):
        image_boot.check_way(PLAIN, {**plain, "cmdline": "boot=anklume"})


def test_the_userspace_figure_is_multi_user_less_the_initramfs() -> None:
    t = Times(initramfs=18.5, multi_user=32.5, steps={})
    assert t.figure("userspace") == pytest.approx(14.0)
    assert t.figure("kernel -> multi-user") == 32.5


def test_the_milestones_are_the_first_kernel_log_line_of_each() -> None:
    log = "\n".join([
        "[    2.104113] Run /init as init process",
        "[    6.800021] sd 0:0:0:0: [sda] Attached SCSI removable disk",
        "[    9.500000] anklume: found the stick: PERSIST is /dev/sda4",
        "[   10.250000] anklume: slot A, attempt 1",
        "[   11.000000] anklume-step: slot A's verity mapping open",
        "[   12.000000] anklume: slot A opened through dm-verity (signed, root ...)",
        "[   13.000000] anklume: slot A, attempt 2",
        "a line with no time stamp"])
    steps = image_boot.milestones({"commands": {"kernel_log": {"rc": 0, "stdout": log}}})
    assert steps == {"the kernel runs /init": 2.104113, "the stick is attached": 6.800021,
                     "PERSIST found": 9.5, "the attempt counted": 10.25,
                     "slot A's verity mapping open": 11.0}


def test_the_interval_of_equal_runs_is_their_ratio() -> None:
    assert image_boot.ratio_interval([2.0] * 5, [1.0] * 5) == (2.0, 2.0)
    low, high = image_boot.ratio_interval([1.0, 1.1, 1.2, 1.3], [1.0, 1.05, 1.1, 1.15])
    assert low <= 1.0 < 1.2 <= high


def test_a_drift_both_ways_share_cancels_in_the_rounds_own_ratios() -> None:
    # The host slows down round after round; the shipped boot is 3 % slower
    # than its round's plain one, give or take 1 %.
    drift = [30.0, 34.0, 38.0, 42.0, 46.0, 50.0]
    plain = drift
    shipped = [d * r for d, r in zip(drift, [1.02, 1.04, 1.03, 1.02, 1.04, 1.03], strict=True)]
    paired, low, high = image_boot.paired_interval(shipped, plain)
    assert paired == pytest.approx(1.03)
    assert 1.02 <= low <= paired <= high <= 1.04
    assert image_boot.verdict(low, high) == "met"
    # Taken way by way, the drift hides it: the interval straddles the target.
    assert image_boot.verdict(*image_boot.ratio_interval(shipped, plain)).startswith("not decided")


def test_the_verdict_says_met_not_met_or_undecided() -> None:
    assert image_boot.verdict(0.98, 1.04) == "met"
    assert image_boot.verdict(1.06, 1.10) == "NOT MET"
    assert image_boot.verdict(1.01, 1.07).startswith("not decided")


def test_a_boot_left_in_the_initramfs_shell_or_a_panic_is_stopped(tmp_path: Path) -> None:
    assert not image_boot.stuck(tmp_path)
    console = tmp_path / "console.log"
    console.write_text("Begin: Mounting root file system ... done.\n")
    assert not image_boot.stuck(tmp_path)
    console.write_text("ALERT!  PARTUUID=x does not exist.  Dropping to a shell!\n(initramfs) ")
    assert image_boot.stuck(tmp_path)
    console.write_text("Kernel panic - not syncing: VFS: Unable to mount root fs\n")
    assert image_boot.stuck(tmp_path)


def boot_line(way: str, n: int, initramfs: float, multi_user: float) -> str:
    steps = {"started": 9.5, "slot A's root hash trusted (signed)": 10.0}
    return f"{way} {n}: {Times(initramfs, multi_user, steps)}"


def test_a_stopped_runs_log_gives_its_complete_rounds_in_order() -> None:
    log = "\n".join([
        "load average 0.5 on 2 cores",
        boot_line(SHIPPED, 0, 12.0, 40.0), boot_line(PLAIN, 0, 11.0, 41.0),
        boot_line(PLAIN, 1, 11.5, 42.0), boot_line(SHIPPED, 1, 12.5, 43.0),
        boot_line(SHIPPED, 2, 13.0, 44.0),  # stopped here: round 2 is not complete
    ])
    times = image_boot.times_from_log(log)
    assert [t.multi_user for t in times[SHIPPED]] == [40.0, 43.0]
    assert [t.multi_user for t in times[PLAIN]] == [41.0, 42.0]
    assert times[SHIPPED][1].steps == {"started": 9.5,
                                       "slot A's root hash trusted (signed)": 10.0}


def test_the_figures_of_logs_are_reported_pooled(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "bench.log"
    log.write_text("\n".join(boot_line(way, n, 12.0, 40.0 + n)
                             for n in range(3) for way in (SHIPPED, PLAIN)) + "\n")
    image_boot.report_log([log, log])
    out = capsys.readouterr().out
    assert "6 boots each way" in out
    assert "the rounds' own ratios: 1.000" in out
    assert "units failed (shipped): not in the log" in out
