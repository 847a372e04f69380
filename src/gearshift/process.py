"""What the ``gearshift`` command does to its own process for a deployment: the pid file
(``--pid``), the working directory (``--chdir``) and dropping root's privileges (``--user``,
``--group``) once the listening sockets are bound, so that port 80 works without running the
application as root.

Errors are :class:`ProcessSetupError`, one line naming the option as the user gave it.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import tempfile
from dataclasses import dataclass

from .core.errors import GearshiftError

log = logging.getLogger("gearshift")


class ProcessSetupError(GearshiftError):
    """The process cannot be set up as asked: a live pid file, a missing directory, no root."""


def change_directory(path: str, origin: str) -> None:
    try:
        os.chdir(path)
    except FileNotFoundError:
        raise ProcessSetupError(f"{origin} {path}: no such directory") from None
    except NotADirectoryError:
        raise ProcessSetupError(f"{origin} {path}: not a directory") from None
    except OSError as exc:
        raise ProcessSetupError(f"{origin} {path}: {(exc.strerror or str(exc)).lower()}") from None


# -- the pid file --------------------------------------------------------------------------------


class PidFile:
    """The master's pid in a file while it serves: :meth:`check` before binding refuses to start
    a second server over a live one, :meth:`write` after binding, :meth:`remove` at exit if the
    file still holds this process's pid (another server may have taken it over)."""

    def __init__(self, path: str, origin: str) -> None:
        self.path = os.path.abspath(path)  # removed at exit whatever the directory is by then
        self.shown = path
        self.origin = origin
        self.pid: int | None = None

    def check(self) -> None:
        """Fail if the file names a live process; a stale one (a crash) is overwritten later."""
        pid = self._read()
        if pid is None or pid == os.getpid():  # pid 1 again in a restarted container: ours
            return
        if _alive(pid):
            raise ProcessSetupError(
                f"{self.origin} {self.shown}: process {pid} is running (another gearshift?); stop it, "
                f"or remove the file if that process is not a gearshift"
            )
        log.info("%s %s: process %d is gone; the file is overwritten", self.origin, self.shown, pid)

    def write(self) -> None:
        """Write atomically (a reader never sees an empty file): a temporary file, renamed."""
        directory = os.path.dirname(self.path)
        try:
            fd, temporary = tempfile.mkstemp(prefix=".gearshift-pid-", dir=directory)
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(f"{os.getpid()}\n")
                os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide it from monitoring tools
                os.replace(temporary, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
        except OSError as exc:
            raise ProcessSetupError(f"{self.origin} {self.shown}: cannot write it: {exc.strerror or exc}") from None
        self.pid = os.getpid()

    def remove(self) -> None:
        if self.pid is None or self.pid != os.getpid():  # not written, or a forked worker
            return
        self.pid = None
        try:
            if self._read() == os.getpid():
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        except (OSError, ProcessSetupError) as exc:
            # After --user, in a directory only root may write: the next start overwrites it.
            # Logged, not raised: it runs on the way out, maybe with an error of its own to report.
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            log.warning("cannot remove the pid file %s: %s", self.shown, reason.lower())

    def _read(self) -> int | None:
        try:
            with open(self.path) as f:
                text = f.read(64).strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ProcessSetupError(f"{self.origin} {self.shown}: cannot read it: {exc.strerror or exc}") from None
        return int(text) if text.isdigit() and int(text) > 0 else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


# -- dropping privileges -------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Who the process becomes: ``user`` (a name, for its supplementary groups, or None for a
    bare uid), ``uid`` (None: stay root, only the group changes) and ``gid``."""

    user: str | None
    uid: int | None
    gid: int

    def describe(self) -> str:
        who = self.user or (str(self.uid) if self.uid is not None else "root")
        try:
            group = grp.getgrgid(self.gid).gr_name
        except KeyError:
            group = str(self.gid)
        return f"user {who}, group {group}"


def resolve_identity(user: str | None, group: str | None, origins: tuple[str, str]) -> Identity | None:
    """The identity ``--user``/``--group`` name (names or numeric ids), or None if neither is
    given; an error unless the process runs as root, which is what they are for."""
    if user is None and group is None:
        return None
    user_origin, group_origin = origins
    if os.geteuid() != 0:
        given = " and ".join(o for o, v in ((user_origin, user), (group_origin, group)) if v is not None)
        raise ProcessSetupError(
            f"{given} needs gearshift started as root (it drops root's privileges after binding); "
            f"this process runs as uid {os.geteuid()}: leave it out, or start gearshift as root"
        )
    name: str | None = None
    uid: int | None = None
    gid: int | None = None
    if user is not None:
        entry = _passwd(user, user_origin)
        if entry is None:
            uid = int(user)
        else:
            name, uid, gid = entry.pw_name, entry.pw_uid, entry.pw_gid
    if group is not None:
        gid = _group_id(group, group_origin)
    if gid is None:
        raise ProcessSetupError(f"{user_origin} {user}: uid {user} has no passwd entry, so no group: "
                                f"give {group_origin}")
    return Identity(name, uid, gid)


def _passwd(user: str, origin: str) -> pwd.struct_passwd | None:
    """The passwd entry of a name or a numeric uid; None for a uid without one (allowed)."""
    try:
        return pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        if user.isdigit():
            return None
        raise ProcessSetupError(f"{origin} {user}: no such user") from None


def _group_id(group: str, origin: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ProcessSetupError(f"{origin} {group}: no such group") from None


def hand_over(paths: list[str], identity: Identity) -> None:
    """Give the Unix socket files root created to the identity, so that their mode bits
    (``--umask``) mean what they say for it: with ``--group www-data --umask 007`` nginx connects."""
    for path in paths:
        try:
            os.chown(path, -1 if identity.uid is None else identity.uid, identity.gid)
        except OSError as exc:
            raise ProcessSetupError(f"cannot give {path} to {identity.describe()}: {exc.strerror or exc}") from None


def drop_privileges(identity: Identity) -> None:
    """Become ``identity``, for good: supplementary groups first (root's would otherwise stay),
    then the group, then the user (after which changing the groups is no longer allowed). Then
    check that root cannot be taken back: a process that could regain it must not serve."""
    try:
        if identity.user is not None:
            os.initgroups(identity.user, identity.gid)
        else:
            os.setgroups([identity.gid])
        os.setresgid(identity.gid, identity.gid, identity.gid)
        if identity.uid is not None:
            os.setresuid(identity.uid, identity.uid, identity.uid)
    except OSError as exc:
        raise ProcessSetupError(f"cannot switch to {identity.describe()}: {exc.strerror or exc}") from None
    if identity.uid is not None and identity.uid != 0:
        if set(os.getresuid()) != {identity.uid} or set(os.getresgid()) != {identity.gid}:
            raise ProcessSetupError(f"switching to {identity.describe()} left another id in place; refusing to serve")
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise ProcessSetupError(
                f"root could be regained after switching to {identity.describe()}; refusing to serve"
            )
    log.info("running as %s", identity.describe())

