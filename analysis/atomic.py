"""Writing a file or a folder next to a user's files so that the target is only ever whole, or untouched.

Everything is written into a hidden temporary beside the target, then put in place in one step: a hard
link or a rename that fails if another writer got there first (so two exports to one new name never both
succeed), or an atomic exchange with an earlier export (Linux renameat2), re-checked after the exchange and
undone if what it replaced turns out to be the user's. A temporary's name carries its writer's process id,
so what a killed writer left is removed by the next one. No streamlit here.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

MAX_NAME_IN_TEMP = 64  # of the target's name in a temporary's: a 255-byte target name must still work
TEMP_KINDS = ("partial", "old")  # a temporary being written; an old folder moved aside (no-exchange fallback)
RENAME_EXCHANGE = 2  # linux/fs.h
AT_FDCWD = -100


def temp_prefix(out: Path, kind: str = "partial") -> str:
    """The hidden temporary's name prefix: the target's name, cut so that the whole stays a valid file name,
    and this process's id, so that a later writer tells a killed writer's temporary from a live one's."""
    return f".{out.name[:MAX_NAME_IN_TEMP]}.{kind}-{os.getpid()}-"


def sweep_temporaries(out: Path) -> None:
    """Remove what killed writers left beside `out` (and where a kill fell between the fallback's two
    renames, put the old folder back first)."""
    pattern = re.compile(rf"^\.{re.escape(out.name[:MAX_NAME_IN_TEMP])}\.({'|'.join(TEMP_KINDS)})-(\d+)-")
    try:
        entries = sorted(out.parent.iterdir(), key=lambda p: p.name)
    except OSError:
        return
    for entry in entries:
        match = pattern.match(entry.name)
        if not match or is_running(int(match[2])):
            continue
        with contextlib.suppress(OSError):
            if match[1] == "old" and not out.exists() and not out.is_symlink():
                entry.rename(out)  # the old folder, moved aside by a writer killed before the new one went in
            elif entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink()


def is_running(pid: int) -> bool:
    """Whether a process with this id runs (another user's counts as running)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def write_file(out: Path, write: Callable[[Path], None], *, overwrite: bool) -> None:
    """`write(tmp)` into a hidden temporary file beside `out`, then put it in place in one step.

    Without `overwrite` that step is a hard link, which fails if `out` appeared since any earlier check;
    with it, a rename replaces the old file (never a folder, checked again at that moment).

    Raises:
        FileExistsError: `out` exists and `overwrite` is false.
        ValueError: `out` is a folder.
    """
    handle, name = tempfile.mkstemp(prefix=temp_prefix(out), dir=out.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        write(tmp)
        tmp.chmod(0o666 & ~umask())  # mkstemp makes it private
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        if out.is_dir() and not out.is_symlink():
            raise ValueError(f"{out}: is a folder; name a new .safetensors file, or a folder without that suffix")
        if overwrite:
            tmp.replace(out)
            return
        try:
            os.link(tmp, out)  # fails if `out` exists by now
        except FileExistsError:
            raise FileExistsError(f"{out}: exists; choose another file name or pass overwrite") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_folder(out: Path, write: Callable[[Path], None], *, overwrite: bool, keep: Sequence[str]) -> None:
    """`write(tmp)` into a hidden temporary folder beside `out`, then put it in place in one step.

    A new or empty target: one rename, which fails if another writer filled `out` since any earlier check.
    With `overwrite`, a folder of plain files named in `keep` (an earlier export) is exchanged for the new
    one in one step, so `out` always holds a whole folder, old or new; what was replaced is checked again
    after the exchange and, if it holds anything else by then, the exchange is undone.

    Raises:
        FileExistsError: `out` is not empty and `overwrite` is false.
        ValueError: `out` holds something not in `keep` (even with `overwrite`); nothing is replaced.
    """
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(out), dir=out.parent))
    try:
        write(tmp)
        mask = umask()
        tmp.chmod(0o777 & ~mask)  # mkdtemp makes it private: readable as a folder the user made would be
        for file in tmp.iterdir():
            file.chmod(0o666 & ~mask)
            with file.open("rb") as f:
                os.fsync(f.fileno())
        try:
            tmp.rename(out)  # atomic; replaces only an empty folder
            return
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        if not overwrite:
            raise FileExistsError(f"{out}: exists and is not empty; choose another folder or pass overwrite")
        _replace_folder(tmp, out, keep)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def not_written(folder: Path, keep: Sequence[str]) -> list[str]:
    """Entries of `folder` other than plain files named in `keep`: by type as well as name, so a folder or
    a link named `adapter_config.json` counts as the user's."""
    return sorted(p.name for p in folder.iterdir() if p.name not in keep or p.is_symlink() or not p.is_file())


def _refusal(out: Path, others: list[str]) -> ValueError:
    return ValueError(
        f"{out}: holds {others[0]!r}, which no export writes, so it is not replaced; choose another folder"
    )


def _replace_folder(new: Path, out: Path, keep: Sequence[str]) -> None:
    """Put the folder `new` at `out` in place of an earlier one, which ends up at `new` (removed by the caller)."""
    if others := not_written(out, keep):
        raise _refusal(out, others)
    if exchange(new, out):
        if others := not_written(new, keep):  # what was at `out` a moment ago: the user's after all
            exchange(new, out)
            raise _refusal(out, others)
        return
    # no atomic exchange here (not Linux, or a file system without it): two renames, the old folder kept aside
    # under a name that `sweep_temporaries` puts back if this process is killed between them
    backup = Path(tempfile.mkdtemp(prefix=temp_prefix(out, "old"), dir=out.parent))
    backup.rmdir()
    out.rename(backup)
    new.rename(out)
    shutil.rmtree(backup, ignore_errors=True)


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with renameat2(RENAME_EXCHANGE); False where that is not available."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def umask() -> int:
    """The process umask, read without changing it (os.umask sets it, a race with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022
