"""Updates from an http(s) URL, against a loopback server that misbehaves.

The daemon downloads with short timeouts here (download_timeout below) so a
stall costs a second, not thirty.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from anklumed.slots import bundle
from devtools.bundle_server import BundleServer, Faults, self_signed, serving
from tests.service.conftest import Sim
from tests.service.test_update import VERIFICATION_FAILED, make_bundle, slot_files

NOT_FOUND = 5
IMAGE_FILLER = 6 << 20  # several network reads and two 4 MiB writes
LOOPBACK = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def fast_downloads(sim: Sim, env: dict[str, str] | None = None) -> None:
    config = sim.workdir / "anklumed.toml"
    if "download_timeout" not in config.read_text():
        with config.open("a") as f:
            f.write("download_timeout = 1.0\ndownload_attempts = 4\ndownload_backoff = 0.05\n")
    sim.stop_daemon()
    sim.start_daemon(env if env is not None else LOOPBACK)


@pytest.fixture
def bundle_dir(sim: Sim, tmp_path: Path) -> Iterator[Path]:
    manifest = make_bundle(sim, tmp_path, filler=IMAGE_FILLER)
    fast_downloads(sim)
    yield manifest.parent


def update(sim: Sim, server: BundleServer, manifest: str = "") -> tuple[int, str]:
    name = manifest or next(server.root.glob("*.manifest")).name
    done = sim.ctl("update", f"{server.url}/{name}")
    return done.returncode, done.stdout + done.stderr


def assert_installed(sim: Sim) -> None:
    status = sim.status()
    assert (status["PrimarySlot"], status["BootCount"]) == ("B", 0)
    assert status["Slots"]["B"]["Status"] == "ok"


def test_a_bundle_downloads_signed_and_verified(sim: Sim, bundle_dir: Path) -> None:
    with serving(bundle_dir) as server:
        code, out = update(sim, server)
    assert code == 0, out
    assert "signed by builder" in out
    assert_installed(sim)
    assert sim.status()["Slots"]["B"]["Source"].startswith("http://127.0.0.1:")


def test_dropped_connections_resume_where_they_stopped(sim: Sim, bundle_dir: Path) -> None:
    size = next(bundle_dir.glob("*.squashfs")).stat().st_size
    drops = [size // 5, size // 2, size - 10]
    with serving(bundle_dir, Faults(drop_at=list(drops))) as server:
        code, out = update(sim, server)
        images = server.image_requests()
    assert code == 0, out
    assert_installed(sim)
    # One request for the start, one resumed Range request per drop, at that byte.
    assert [s.range for s in images] == [None] + [f"bytes={d}-" for d in drops]
    assert all(s.if_range == '"v1"' for s in images[1:])


def test_a_stalled_server_is_reconnected(sim: Sim, bundle_dir: Path) -> None:
    size = next(bundle_dir.glob("*.squashfs")).stat().st_size
    with serving(bundle_dir, Faults(stall_at=[size // 3], stall_seconds=4)) as server:
        code, out = update(sim, server)
        images = server.image_requests()
    assert code == 0, out
    assert [s.range for s in images] == [None, f"bytes={size // 3}-"]
    assert_installed(sim)


def test_transient_server_errors_are_retried(sim: Sim, bundle_dir: Path) -> None:
    with serving(bundle_dir, Faults(fail_first=2)) as server:
        code, out = update(sim, server)
    assert code == 0, out
    assert_installed(sim)


def test_a_server_that_lies_about_the_length_is_refused(sim: Sim, bundle_dir: Path) -> None:
    before = slot_files(sim)
    with serving(bundle_dir, Faults(extra_length=4096)) as server:
        code, out = update(sim, server)
    assert code == VERIFICATION_FAILED, out
    assert "the server sends" in out and "its manifest says" in out
    ab_state, boot_count, _ = slot_files(sim)
    assert (ab_state, boot_count) == before[:2]


def test_a_server_that_ignores_range_is_read_past_what_we_have(
        sim: Sim, bundle_dir: Path) -> None:
    size = next(bundle_dir.glob("*.squashfs")).stat().st_size
    with serving(bundle_dir, Faults(drop_at=[size // 2], ignore_range=True)) as server:
        code, out = update(sim, server)
    assert code == 0, out
    assert_installed(sim)


def test_an_image_replaced_during_the_download_is_not_spliced(
        sim: Sim, bundle_dir: Path) -> None:
    size = next(bundle_dir.glob("*.squashfs")).stat().st_size
    # Requests: manifest, signature, image (dropped once slot B is being written),
    # then the resume sees a new ETag.
    with serving(bundle_dir, Faults(drop_at=[size - 4096], new_etag_after=3)) as server:
        code, out = update(sim, server)
    assert code == VERIFICATION_FAILED, out
    assert "changed on the server" in out
    assert "STATUS=failed" in slot_files(sim)[2]
    assert sim.status()["PrimarySlot"] == "A"


def test_a_server_that_never_recovers_gives_up_with_a_sentence(
        sim: Sim, bundle_dir: Path) -> None:
    with serving(bundle_dir, Faults(fail_first=100)) as server:
        code, out = update(sim, server)
    assert code == NOT_FOUND, out
    assert "could not download" in out and "503" in out and "Traceback" not in out


def test_a_missing_bundle_is_not_found(sim: Sim, bundle_dir: Path) -> None:
    with serving(bundle_dir) as server:
        code, out = update(sim, server, "nothing-here.manifest")
    assert code == NOT_FOUND, out
    assert "404" in out


def test_an_unsigned_bundle_needs_a_pinned_root_hash(sim: Sim, tmp_path: Path) -> None:
    manifest = make_bundle(sim, tmp_path)
    manifest.with_name(manifest.name + ".sig").unlink()
    fast_downloads(sim)
    root_hash = bundle.parse_manifest(manifest.read_bytes()).root_hash
    with serving(manifest.parent) as server:
        code, out = update(sim, server)
        assert code == VERIFICATION_FAILED, out
        assert "not signed" in out
        done = sim.ctl("update", f"{server.url}/{manifest.name}", "--verify-hash", root_hash)
    assert done.returncode == 0, done.stderr
    assert "unsigned" in done.stdout


def test_tls_is_verified(sim: Sim, bundle_dir: Path, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    with serving(bundle_dir, tls=(cert, key)) as server:
        code, out = update(sim, server)
        assert code == VERIFICATION_FAILED, out
        assert "TLS certificate could not be verified" in out
        # Trusting the server's CA (as an administrator would) lets it through.
        fast_downloads(sim, {**LOOPBACK, "REQUESTS_CA_BUNDLE": str(cert)})
        code, out = update(sim, server)
    assert code == 0, out
    assert_installed(sim)


def test_the_proxy_comes_from_the_environment(sim: Sim, bundle_dir: Path) -> None:
    with serving(bundle_dir) as proxy:
        fast_downloads(sim, {"http_proxy": proxy.url, "HTTP_PROXY": proxy.url,
                             "NO_PROXY": "", "no_proxy": ""})
        name = next(bundle_dir.glob("*.manifest")).name
        # A name that resolves nowhere: only the proxy can answer it.
        done = sim.ctl("update", f"http://bundles.example.invalid/{name}")
        seen = proxy.seen
    assert done.returncode == 0, done.stderr
    assert seen and all(s.absolute for s in seen)
    assert_installed(sim)


def test_credentials_and_tokens_in_the_url_are_never_stored_or_logged(
        sim: Sim, bundle_dir: Path) -> None:
    name = next(bundle_dir.glob("*.manifest")).name
    with serving(bundle_dir) as server:
        url = server.url.replace("://", "://anklume:hunter2@") + f"/{name}?token=s3cr3t"
        done = sim.ctl("update", url)
    assert done.returncode == 0, done.stderr
    source = sim.status()["Slots"]["B"]["Source"]
    assert source == f"{server.url}/{name}"
    everything = sim.daemon_log.read_text() + "".join(sim.persist_files().values())
    assert "hunter2" not in everything and "s3cr3t" not in everything
