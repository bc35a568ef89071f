"""shm's files: every file pyxccl puts in /dev/shm, named after the process that made it, and
their removal once that process is gone.

Every name is ``pyxccl-...-p<pid namespace>.<pid>``: :func:`sweep_stale` (run at every
communicator's start and when a same-host peer is lost) removes the files of processes that
no longer exist, so a crash of any rank leaves nothing behind for long.
"""

from __future__ import annotations

import os
import re
import time

SHM_DIR = "/dev/shm"
_OWNER = re.compile(r"^pyxccl-.*-p(\d+)\.(\d+)$")


def pid_namespace() -> str:
    """This process's pid namespace ("0" when unknown): pids compare only within one."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


def owner_suffix() -> str:
    """The suffix naming this process in its /dev/shm files: ``-p<pid namespace>.<pid>``."""
    return f"-p{pid_namespace()}.{os.getpid()}"


def sweep_stale(directory: str = SHM_DIR, min_age: float = 1.0) -> list[str]:
    """Remove pyxccl files whose creating process (in this pid namespace) is gone; return their names.

    Files younger than ``min_age`` seconds are kept (their creator may have just started in a
    way this process cannot see yet); files of other pid namespaces are never touched.
    """
    mine = pid_namespace()
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        m = _OWNER.match(name)
        if m is None or m.group(1) != mine or pid_alive(int(m.group(2))):
            continue
        path = os.path.join(directory, name)
        try:
            if now - os.stat(path).st_mtime < min_age:
                continue
            os.unlink(path)
            removed.append(name)
        except OSError:
            pass
    return removed


def pid_alive(pid: int) -> bool:
    """True when a process with this pid runs (in this pid namespace); a zombie does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")


def ring_path(comm_tag: str, sender: int, receiver: int, channel: int) -> str:
    """The file of the slot ring from ``sender`` to ``receiver`` on ``channel`` (this process's: the receiver's)."""
    return os.path.join(SHM_DIR, f"pyxccl-{comm_tag}-{sender}to{receiver}-c{channel}{owner_suffix()}")


def doorbell_path(comm_tag: str, rank: int) -> str:
    """The file of ``rank``'s doorbell in communicator ``comm_tag`` (this process's)."""
    return f"{SHM_DIR}/pyxccl-{comm_tag}-bell{rank}{owner_suffix()}"


def remove(path: str) -> None:
    """Remove one of this process's files (gone already: nothing to do)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
