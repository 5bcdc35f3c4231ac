"""A local bundle as open files: what anklumed reads, and whose rights allow it.

anklumed runs as root; its callers need not. It never reads a file for a
caller that the caller could not read itself: anklumectl opens the bundle
and passes the open files over the bus (Manager.UpdateFromFiles, as UDisks
takes loop images), and a path given to Manager.Update is opened here one
name at a time, the caller's rights (``Reader``) checked on every directory
and on the file, symbolic links followed by hand. Whoever opened them, every
file is checked to be a regular file before a byte is read (a FIFO would
hang, a device never end) and read with a bound.

One LocalFiles owns its descriptors and closes each once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from anklumed.errors import AnklumeError, InvalidArgument, NotAuthorized, NotFound

MAX_SYMLINKS = 40  # as the kernel's path walk
SHOWN_PATH_MAX = 200


@dataclass(frozen=True)
class Reader:
    """The caller whose rights decide what anklumed opens for it."""

    uid: int
    gids: frozenset[int] = frozenset()


def shown_path(path: str | Path) -> str:
    text = str(path)
    return text if len(text) <= SHOWN_PATH_MAX else text[:SHOWN_PATH_MAX] + "…"


def kind_of(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def regular(fd: int, what: str) -> os.stat_result:
    """The file behind ``fd``, if it is a regular file open for reading."""
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        st = os.fstat(fd)
    except OSError:
        raise InvalidArgument(f"the {what} is not an open file: pass a file opened "
                              "for reading") from None
    if not stat.S_ISREG(st.st_mode):
        raise InvalidArgument(f"the {what} is {kind_of(st.st_mode)}, not a regular file: "
                              "give the bundle's own files")
    if flags & os.O_ACCMODE == os.O_WRONLY or flags & os.O_PATH:
        raise InvalidArgument(f"the {what} was not opened for reading: open it read-only")
    return st


def read_small(fd: int, limit: int, what: str) -> bytes:
    """All of a small regular file, from its start, never more than ``limit``.

    pread: the file offset belongs to whoever opened the file too.
    """
    st = regular(fd, what)
    if st.st_size > limit:
        raise InvalidArgument(f"the {what} is {st.st_size} bytes, too large to be one "
                              f"(at most {limit}): check the bundle's files")
    parts: list[bytes] = []
    got = 0
    while got <= limit:
        try:
            piece = os.pread(fd, limit + 1 - got, got)
        except OSError as e:
            raise InvalidArgument(f"the {what} cannot be read ({e.strerror})") from None
        if not piece:
            break
        parts.append(piece)
        got += len(piece)
    if got > limit:
        raise InvalidArgument(f"the {what} grew past {limit} bytes while being read")
    return b"".join(parts)


class FdImage:
    """The image streamed from an open file, at our own offset (pread): the
    caller may move the shared file offset, never what we read. close()
    closes the descriptor only if given its ``owner`` (its LocalFiles)."""

    def __init__(self, fd: int, owner: LocalFiles | None = None) -> None:
        self.fd = fd
        self.owner = owner
        self.position = 0

    def read(self, size: int) -> bytes:
        try:
            data = os.pread(self.fd, size, self.position)
        except OSError as e:
            raise InvalidArgument(f"the image cannot be read ({e.strerror})") from None
        self.position += len(data)
        return data

    def close(self) -> None:
        if self.owner is not None:
            self.owner.close()


@dataclass
class LocalFiles:
    """A local bundle's open files; ``name`` is only what messages show.

    Given as descriptors, the image is among them; opened from a path, the
    image is opened beside the manifest once the manifest names it.
    """

    manifest: int
    signature: int | None = None
    image: int | None = None
    name: str = "the local bundle"
    directory: Path | None = None
    reader: Reader | None = None
    owned: list[int] | None = None  # what close() closes: by default the three

    def __post_init__(self) -> None:
        self._owned = list(self.owned) if self.owned is not None else [
            fd for fd in (self.manifest, self.signature, self.image) if fd is not None]

    def image_fd(self, image_name: str) -> int:
        if self.image is None and self.directory is not None:
            path = self.directory / image_name
            try:
                self.image = open_as(path, self.reader)
            except NotFound:
                raise NotFound(f"the bundle's image {image_name} is missing beside its "
                               "manifest: put the bundle's files together") from None
            self._owned.append(self.image)
        if self.image is None:
            raise NotFound(f"the bundle's image {image_name} was not given: give the image "
                           "the manifest names, beside it")
        return self.image

    def close(self) -> None:
        owned, self._owned = self._owned, []
        for fd in set(owned):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> LocalFiles:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def manifest_path(path: Path) -> Path:
    """The path of the manifest, or of the image (or the bundle's stem) beside one."""
    if path.name in ("", ".", ".."):
        raise InvalidArgument(f"{shown_path(path)} names a directory: give the path of "
                              "a bundle's .manifest")
    return path if path.suffix == ".manifest" else path.with_suffix(".manifest")


def check_local_path(path: Path) -> Path:
    """The manifest's path, if ``path`` can name one."""
    if not path.is_absolute():
        raise InvalidArgument(f"{shown_path(path)} is a relative path: give an absolute "
                              "one (anklumed does not share your working directory)")
    return manifest_path(path)


def open_path(path: Path, reader: Reader | None) -> LocalFiles:
    """Open a local bundle named by a path, with ``reader``'s rights (None: anklumed's)."""
    manifest = check_local_path(path)
    fd = open_as(manifest, reader)
    files = LocalFiles(fd, name=str(manifest), directory=manifest.parent, reader=reader)
    try:
        files.signature = open_as(manifest.with_name(manifest.name + ".sig"), reader)
        files._owned.append(files.signature)
    except NotFound:
        pass  # unsigned: decided later (--verify-hash)
    except BaseException:
        files.close()
        raise
    return files


def open_as(path: Path, reader: Reader | None) -> int:
    """Open ``path`` read-only as ``reader`` could (None: no check), a regular
    file only, never a device, without blocking on a FIFO."""
    try:
        return _walk(str(path), reader)
    except _NotRegular as e:
        raise InvalidArgument(f"{shown_path(path)} is {kind_of(e.mode)}, not a regular "
                              "file: give the bundle's own files") from None
    except OSError as e:
        raise _opening_error(path, e) from None


class _NotRegular(Exception):
    def __init__(self, mode: int) -> None:
        super().__init__(mode)
        self.mode = mode


def _opening_error(path: Path, e: OSError) -> AnklumeError:
    where = shown_path(path)
    if e.errno == errno.ENOENT:
        return NotFound(f"nothing at {where}: check the path (anklumed sees its own /tmp "
                        "and no /home: anklumectl passes local files open)")
    if e.errno in (errno.EACCES, errno.EPERM):
        return NotAuthorized(f"you cannot read {where} yourself, so anklumed does not "
                             "read it for you: give a bundle you can read")
    if e.errno == errno.ELOOP:
        return InvalidArgument(f"{where}: too many symbolic links (a loop?): give the "
                               "bundle's real path")
    if e.errno == errno.ENOTDIR:
        return InvalidArgument(f"{where}: a part of the path is not a directory: check it")
    if e.errno == errno.ENAMETOOLONG:
        return InvalidArgument(f"{where}: a name in the path is too long: check it")
    if e.errno == errno.EISDIR:
        return InvalidArgument(f"{where} is a directory, not a file of a bundle: give "
                               "the path of the bundle's .manifest")
    return InvalidArgument(f"{where} cannot be opened ({e.strerror}): check it")


def _walk(path: str, reader: Reader | None) -> int:
    """The kernel's path walk, by hand, checking ``reader``'s rights on the way.

    Each name is opened with O_PATH|O_NOFOLLOW (which opens nothing: no
    device is touched), checked, then the final file is opened for reading
    and must be the very inode that was checked.
    """
    if "\0" in path:
        raise OSError(errno.EINVAL, "a NUL byte in the path")
    names = deque(path.split("/"))
    must_be_dir = path.endswith("/")
    cwd = _open_dir_checked("/", None, reader)
    links = 0
    try:
        while names:
            name = names.popleft()
            if name in ("", "."):
                continue
            last = not any(n not in ("", ".") for n in names)
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cwd)
            try:
                st = os.fstat(fd)
                if stat.S_ISLNK(st.st_mode):
                    links += 1
                    if links > MAX_SYMLINKS:
                        raise OSError(errno.ELOOP, "too many symbolic links")
                    target = os.readlink("", dir_fd=fd)
                    names.extendleft(reversed(target.split("/")))
                    if target.startswith("/"):
                        os.close(cwd)
                        cwd = -1
                        cwd = _open_dir_checked("/", None, reader)
                    continue
                if stat.S_ISDIR(st.st_mode) and not (last and not must_be_dir):
                    new = _open_dir_checked(".", fd, reader)
                    os.close(cwd)
                    cwd = new
                    continue
                if not last or must_be_dir:
                    raise OSError(errno.ENOTDIR, "not a directory")
                return _open_final(name, cwd, st, reader)
            finally:
                os.close(fd)
        raise OSError(errno.EISDIR, "a directory")
    finally:
        if cwd >= 0:
            os.close(cwd)


def _open_dir_checked(name: str, dir_fd: int | None, reader: Reader | None) -> int:
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        if not _may(reader, fd, os.fstat(fd), 0o1):
            raise OSError(errno.EACCES, "permission denied")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_final(name: str, dir_fd: int, checked: os.stat_result, reader: Reader | None) -> int:
    if stat.S_ISDIR(checked.st_mode):
        raise OSError(errno.EISDIR, "a directory")
    if not stat.S_ISREG(checked.st_mode):
        # Never opened: opening a device can act (a tape rewinds, a watchdog arms).
        raise _NotRegular(checked.st_mode)
    fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC,
                 dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (checked.st_dev, checked.st_ino):
            raise OSError(errno.EAGAIN, "the file was replaced while being opened")
        if not _may(reader, fd, st, 0o4):
            raise OSError(errno.EACCES, "permission denied")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _may(reader: Reader | None, fd: int, st: os.stat_result, bit: int) -> bool:
    """Would the kernel grant ``reader`` this permission (read 4, search 1)?

    Owner, then group, then others, as the kernel decides. A POSIX ACL can
    grant or deny a named user or group beyond the mode bits: with one, only
    the owner's bits are trusted (a refusal, never a leak).
    """
    if reader is None or reader.uid == 0:
        return True
    if st.st_uid == reader.uid:
        return bool(st.st_mode >> 6 & bit)
    if _has_acl(fd):
        return False
    if st.st_gid in reader.gids:
        return bool(st.st_mode >> 3 & bit)
    return bool(st.st_mode & bit)


def _has_acl(fd: int) -> bool:
    try:
        os.getxattr(fd, "system.posix_acl_access")
    except OSError as e:
        return e.errno not in (errno.ENODATA, errno.EOPNOTSUPP)
    return True
