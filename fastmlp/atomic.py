"""Crash-safe writes: a file is replaced whole or not at all.

Every write goes to an unnamed (Linux ``O_TMPFILE``) or hidden temporary file
in the target's folder, is flushed and fsync'd, then renamed over the target
(and the folder fsync'd): a crash, even SIGKILL, leaves the previous file whole.
"""
import ctypes
import errno
import os
import re
import secrets
import socket

_CHUNK = 1 << 20

_link_works = {}  # st_dev of a folder -> whether an O_TMPFILE file can be linked there


def _fsync_dir(folder):
    if os.name == "nt":
        return  # folders cannot be opened (or fsync'd) on Windows
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _temp_name(folder, base):
    host = socket.gethostname().replace(".", "_") or "host"
    return os.path.join(folder, f".{base}.{host}-{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _sweep_stale_temps(folder, base):
    """Remove temporaries of ``base`` left by killed processes of this host.

    Only a process killed between naming its temporary and renaming it (or on
    a system without O_TMPFILE, while writing) leaves one."""
    if os.name == "nt":
        return  # os.kill(pid, 0) would terminate the process there
    host = socket.gethostname().replace(".", "_") or "host"
    pattern = re.compile(re.escape(f".{base}.{host}-") + r"(\d+)\.[0-9a-f]{8}\.tmp\Z")
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        m = pattern.match(name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            try:
                os.unlink(os.path.join(folder, name))
            except OSError:
                pass
        except OSError:
            pass  # alive (or not ours to ask about)


def _open_unnamed(folder):
    """An O_TMPFILE file in ``folder`` (no name: a crash leaves nothing), or None."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None:
        return None
    try:
        dev = os.stat(folder).st_dev
    except OSError:
        return None
    if _link_works.get(dev) is False:
        return None
    try:
        return os.open(folder, flag | os.O_RDWR | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError:
        _link_works[dev] = False
        return None


def _link_unnamed(fd, dest):
    """Give the O_TMPFILE file ``fd`` the name ``dest``; False when the system will not."""
    try:
        os.link(f"/proc/self/fd/{fd}", dest, follow_symlinks=True)
        return True
    except OSError:
        pass
    try:  # linkat(fd, "", AT_FDCWD, dest, AT_EMPTY_PATH): needs CAP_DAC_READ_SEARCH before Linux 6.10
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.linkat(fd, b"", -100, os.fsencode(dest), 0x1000) == 0
    except (OSError, AttributeError):
        return False


def atomic_write(path, write):
    """Call ``write(f)`` on a binary read/write file, then put it at ``path`` atomically.

    A crash (even SIGKILL) at any point leaves either the previous file or the
    new one at ``path``, never a mix, and (on Linux) no temporary file: the data
    goes to an unnamed O_TMPFILE that gets a name only once it is complete and
    fsync'd. An exception removes the temporary and propagates."""
    path = os.path.abspath(os.fspath(path))
    folder, base = os.path.split(path)
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, "folder to write into not found", folder)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "expected a file path, got a folder", path)
    _sweep_stale_temps(folder, base)
    fd = _open_unnamed(folder)
    named = None
    if fd is None:
        named = _temp_name(folder, base)
        fd = os.open(named, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with os.fdopen(fd, "w+b") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            if named is None:
                named = _temp_name(folder, base)
                if not _link_unnamed(f.fileno(), named):
                    _link_works[os.fstat(f.fileno()).st_dev] = False
                    _copy_to_new_file(f, named)
        os.replace(named, path)
        named = None
    finally:
        if named is not None:
            try:
                os.unlink(named)
            except FileNotFoundError:
                pass
    _fsync_dir(folder)
    return path


def _copy_to_new_file(f, dest):
    f.seek(0)
    with open(dest, "xb") as g:
        while chunk := f.read(_CHUNK):
            g.write(chunk)
        g.flush()
        os.fsync(g.fileno())

