"""The write rule of every command and host: checks made before any work starts, atomic writes, locks.

* An existing output is never replaced unless the caller says so (the CLI's ``--overwrite`` flag).
* An output never equals one of the inputs (paths are resolved, symlinks and hard links followed).
* An output that is a folder where a file is expected (or the reverse), a FIFO/device, or that lies in a folder
  that cannot be written is refused before the work starts.
* Writes are atomic (temp file + rename, or a no-clobber hard link); a failed write removes its temp file and
  reports a full disk / permission problem in words; temp files left by killed runs are removed by the next write.
* A long run holds a lock on its output (:class:`OutputLock`): a second run on the same output fails at once.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from .errors import OutputBusyError, OutputError, RenegError, WriteError

#: The one flag name of every CLI command that may replace existing outputs.
OVERWRITE_FLAG = "--overwrite"


@dataclass(frozen=True)
class RunChoices:
    """How a host tells the user to continue or to start over a long run (phrases completing "..., or X to
    ..."): the CLI's flags by default; ComfyUI's ``if_exists`` and the A1111 tab's check boxes have their own."""

    resume: str = "pass --resume"
    overwrite: str = f"pass {OVERWRITE_FLAG}"
    no_resume: str = "start without --resume"


CLI_CHOICES = RunChoices()


def sentence(phrase: str) -> str:
    """``phrase`` with a capital first letter (to start a sentence)."""
    return phrase[:1].upper() + phrase[1:]
PathLike = str | os.PathLike

_UMASK = os.umask(0)
os.umask(_UMASK)
_HOST = re.sub(r"[^A-Za-z0-9_-]", "", socket.gethostname())[:24] or "host"
_TMP_MARK = ".reneg-"


def _lexists(p: Path) -> bool:
    return os.path.lexists(p)


def same_path(a: PathLike, b: PathLike) -> bool:
    """True if ``a`` and ``b`` name the same file (after ``~``, symlinks, ``..`` and hard links)."""
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    try:
        if pa.exists() and pb.exists():
            return os.path.samefile(pa, pb)
    except OSError:
        pass
    return pa.resolve() == pb.resolve()


def check_writable_folder(folder: PathLike, what: str = "output") -> None:
    """The nearest existing ancestor of ``folder`` must be a folder we may create files in."""
    d = Path(folder).expanduser().absolute()
    while not _lexists(d) and d != d.parent:
        d = d.parent
    if not d.is_dir():
        raise OutputError(f"Cannot write the {what} under {folder}: {d} is a file, not a folder. "
                          "Choose an output path inside a folder.")
    if not os.access(d, os.W_OK | os.X_OK):
        raise OutputError(f"Cannot write the {what} in {d}: permission denied. Choose a folder you can write to.")


def check_output_file(path: PathLike, *, overwrite: bool = False, inputs: Iterable[Optional[PathLike]] = (),
                      what: str = "output", suffix: Optional[str] = None, flag: str = OVERWRITE_FLAG) -> Path:
    """Raise :class:`OutputError` unless ``path`` may be written as a file now; return it (``~`` expanded)."""
    p = Path(path).expanduser()
    for inp in inputs:
        if inp is not None and str(inp) and same_path(p, inp):
            raise OutputError(f"{p}: the {what} is also an input ({inp}); writing it would destroy the input. "
                              "Choose a different output path.")
    if suffix is not None and p.suffix.lower() != suffix:
        raise OutputError(f"{p}: the {what} must be a {suffix} file; change the extension.")
    if _lexists(p):
        try:
            mode = os.stat(p).st_mode
        except OSError:  # a dangling symlink: writing replaces the link itself
            mode = stat.S_IFREG
        if stat.S_ISDIR(mode):
            raise OutputError(f"{p} is a folder; the {what} must be a file path (e.g. {p / ('out' + (suffix or ''))}).")
        if not stat.S_ISREG(mode):
            raise OutputError(f"{p} exists and is not a regular file (a FIFO, socket or device); "
                              f"choose another path for the {what}.")
        if not overwrite:
            raise OutputError(f"{p} already exists; pass {flag} to replace it, or choose another path.")
    check_writable_folder(p.parent, what)
    return p


def check_output_folder(path: PathLike, produces: Sequence[str], *, overwrite: bool = False,
                        inputs: Iterable[Optional[PathLike]] = (), what: str = "output folder",
                        flag: str = OVERWRITE_FLAG) -> Path:
    """Raise unless ``path`` may receive the files ``produces`` (names relative to it); return the folder."""
    d = Path(path).expanduser()
    if _lexists(d) and not d.is_dir():
        raise OutputError(f"{d} is a file; the {what} must be a folder (it receives {', '.join(produces)}).")
    for name in produces:
        check_output_file(d / name, overwrite=True, inputs=inputs, what=f"{what} file {name}")
    if not overwrite:
        existing = [n for n in produces if _lexists(d / n)]
        if existing:
            raise OutputError(f"{d} already holds results ({', '.join(existing)}); pass {flag} to replace them, "
                              "or choose another folder.")
    check_writable_folder(d, what)
    return d


# ------------------------------------------------------------------------------------------------ atomic writes
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _temp_prefix(target: Path) -> str:
    return f".{target.name}{_TMP_MARK}{_HOST}-"


def clean_stale_temps(target: PathLike) -> list[Path]:
    """Remove temp files of earlier atomic writes of ``target`` whose process (on this host) is gone."""
    target = Path(target)
    removed = []
    prefix = _temp_prefix(target)
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid_text = name[len(prefix):].split(".", 1)[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and not _pid_alive(int(pid_text)):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


def _describe_write_failure(target: Path, exc: BaseException) -> Optional[str]:
    """A plain-words reason for a failed write (disk full, permissions, read-only), or None if it is not one."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    try:
        free = shutil.disk_usage(target.parent).free
    except OSError:
        free = None
    nearly_full = free is not None and free < 1 << 20
    if code == errno.ENOSPC or "No space left" in text or "os error 28" in text or nearly_full:
        return (f"the disk is full (no space left in {target.parent}). Free some space or write to another "
                "folder")
    if code in (errno.EACCES, errno.EPERM) or "Permission denied" in text or "os error 13" in text:
        return f"permission denied in {target.parent}. Choose a folder you can write to"
    if code == errno.EROFS or "Read-only file system" in text or "os error 30" in text:
        return f"{target.parent} is on a read-only file system. Write somewhere else"
    if code == errno.EDQUOT:
        return "the disk quota is exceeded. Free some space or write to another folder"
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}"
    return None


def atomic_write(path: PathLike, write: Callable[[str], None], *, overwrite: bool = True,
                 flag: str = OVERWRITE_FLAG) -> Path:
    """Call ``write(tmp_path)`` then move it onto ``path`` (replacing it only if ``overwrite``).

    On any failure (or Ctrl-C/SIGTERM) the temp file is removed and ``path`` is unchanged; a full disk or a
    permission problem becomes a :class:`WriteError` that says so.
    """
    target = Path(path).expanduser()
    clean_stale_temps(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f"{_temp_prefix(target)}{os.getpid()}.", suffix=".tmp")
    except OSError as exc:
        raise WriteError(f"Could not write {target}: {_describe_write_failure(target, exc)}.") from exc
    os.close(fd)
    try:
        try:
            write(tmp)
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; saved files get the usual permissions
            if overwrite:
                os.replace(tmp, target)
            else:
                _link_no_clobber(tmp, target, flag)
        except RenegError:
            raise
        except Exception as exc:
            reason = _describe_write_failure(target, exc)
            if reason is None:
                raise
            raise WriteError(f"Could not write {target}: {reason}. Nothing was replaced.") from exc
    finally:
        if os.path.lexists(tmp):
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return target


def _link_no_clobber(tmp: str, target: Path, flag: str) -> None:
    try:
        os.link(tmp, target)  # atomic; fails if target exists
    except FileExistsError:
        raise OutputError(f"{target} already exists; pass {flag} to replace it, or choose another path.") from None
    except OSError as exc:  # no hard links on this file system: check, then rename
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if _lexists(target):
            raise OutputError(f"{target} already exists; pass {flag} to replace it, or choose another path.") from None
        os.replace(tmp, target)


# ------------------------------------------------------------------------------------------------ locks
class OutputLock:
    """An exclusive lock on ``<dir>/.<name>.lock`` held while a run writes ``target`` (released on exit).

    ``fcntl.flock`` where available (the lock dies with the process, even on SIGKILL); elsewhere an
    ``O_EXCL`` lock file naming the owner's pid, taken over when that process is gone.
    """

    def __init__(self, target: PathLike):
        self.target = Path(target).expanduser()
        self.path = self.target.with_name(f".{self.target.name}.lock")
        self._fd: Optional[int] = None

    def _busy(self) -> OutputBusyError:
        try:
            owner = self.path.read_text().strip() or "unknown"
        except OSError:
            owner = "unknown"
        return OutputBusyError(f"{self.target} is being written by another run (pid {owner}). Wait for it to "
                               "finish, stop it, or choose another output path.")

    def acquire(self) -> "OutputLock":
        check_writable_folder(self.path.parent, "lock file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self._acquire_exclusive()
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise self._busy() from None
            try:  # the file we locked may have been unlinked by its previous owner meanwhile: retry then
                if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                    raise FileNotFoundError
            except FileNotFoundError:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            self._fd = fd
            return self

    def _acquire_exclusive(self) -> "OutputLock":  # pragma: no cover - Windows
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip())
                except (OSError, ValueError):
                    pid = -1
                if pid > 0 and _pid_alive(pid):
                    raise self._busy() from None
                self.path.unlink(missing_ok=True)
                continue
            os.write(fd, str(os.getpid()).encode())
            self._fd = fd
            return self
        raise self._busy()

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
