"""Executors confined: a user of their own, a private temporary folder, and with
``bwrap`` a view of only the files they need (docs/architecture.md, Sandbox).

Why one uid per executor, from a reserved range (as systemd's DynamicUser): every
process of a call is that uid's, whatever it did to escape (``setsid``, a double
fork), and ``kill(-1, SIGKILL)`` run *as that uid* signals all of them in one
system call. The kernel walks its task list under a lock that ``fork`` needs too,
so not even a fork bomb outruns it, and the signal cannot reach the node or another
executor (a scan of ``/proc`` can be outrun, and would have to be repeated).

A node that is not root cannot switch users. With ``bwrap`` it confines executors in
namespaces instead (*rootless*): a user namespace (the executor keeps the node's uid,
but sees none of the node's files: not its state folder, its credentials or its home),
a pid namespace (its ``kill(-1)`` reaches only the processes of its own calls, and all
of them die with it), and no network but the lattice. That is the default for a node
that is not root wherever unprivileged user namespaces work.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from superpose import config
from superpose.errors import UserError
from superpose.lattice import shm
from superpose.node.lattice_relay import (
    INSIDE_FOLDER,
    INSIDE_SOCKET,
    LatticeRelay,
    server_addresses,
)

log = logging.getLogger("superpose.node")

NONE, USER, BWRAP = config.SANDBOX_MODES
UID_BASE = config.SANDBOX_UIDS.start
UID_COUNT = len(config.SANDBOX_UIDS)
LOCK_PREFIX = "superpose-sandbox-uid-"
"""An abstract unix socket bound under this name + uid claims that uid for one executor,
machine-wide (per network namespace), and is released by the kernel if the node dies."""
BWRAP_PROGRAM = "bwrap"
SETPRIV = "setpriv"
"""util-linux's (essential on Debian): switches user before it runs the executor."""

PASSED_ENV = (
    "PATH",
    "LANG",
    "LANGUAGE",
    "TZ",
    config.ENV_REPLICAS,
    config.ENV_MAX_DELIVER,
    config.ENV_EXPRESS,
    config.ENV_AFFINITY,
)
"""What a sandboxed executor inherits from the node's environment (and ``LC_*`` and
``PYTHON*``): nothing that could be a credential. The lattice URL comes as an argument."""


def default_mode() -> str:
    """``$SUPERPOSE_SANDBOX``, else ``user`` for a node running as root, else ``bwrap``
    (rootless) where it works, else ``none``."""
    chosen = config.settings().sandbox
    if chosen:
        return chosen
    if os.geteuid() == 0:
        return USER
    return BWRAP if rootless_problem() == "" else NONE


@functools.cache
def rootless_problem() -> str:
    """Why bubblewrap cannot confine executors without root here ("" if it can): it is
    not installed, or this kernel refuses unprivileged user namespaces. Asked once."""
    if shutil.which(BWRAP_PROGRAM) is None:
        return "bubblewrap is not installed (apt-get install bubblewrap)"
    probe = [BWRAP_PROGRAM, *ROOTLESS_FLAGS, "--ro-bind", "/", "/", "--proc", "/proc", "true"]
    try:
        done = subprocess.run(probe, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap could not be run ({exc})"
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip().splitlines()
        return "this kernel refuses unprivileged user namespaces" + (
            f" (bwrap: {said[-1]})" if said else ""
        )
    return ""


ROOTLESS_FLAGS = ("--unshare-user", "--disable-userns", "--unshare-pid")
"""What bwrap adds without root: a user namespace (in which user code may not make
another), besides the pid namespace every bwrap executor has."""


def effective_mode(requested: str) -> tuple[str, str]:
    """The mode a node can have, and why it is not the one asked for ("" if it is)."""
    if requested not in config.SANDBOX_MODES:
        raise UserError(
            f"--sandbox {requested!r}: expected one of {', '.join(config.SANDBOX_MODES)}"
        )
    if requested == NONE:
        return NONE, ""
    if os.geteuid() != 0:
        if requested == BWRAP:
            problem = rootless_problem()
            if problem:
                return NONE, f"--sandbox bwrap: {problem}; user code runs as the node's user"
            return BWRAP, ""
        return NONE, (
            f"--sandbox {requested}: this node is not root, so it cannot give executors "
            "users of their own; user code runs as the node's user (--sandbox bwrap "
            "confines it in namespaces instead)"
        )
    if shutil.which(SETPRIV) is None:
        raise UserError(
            f"--sandbox {requested}: setpriv (util-linux) is not installed; it starts "
            "executors as users of their own"
        )
    if requested == BWRAP and shutil.which(BWRAP_PROGRAM) is None:
        raise UserError(
            "--sandbox bwrap: bubblewrap is not installed (apt-get install bubblewrap), "
            "or use --sandbox user"
        )
    return requested, ""


def executor_root(state_dir: Path, node_id: str) -> tuple[Path, bool]:
    """Where a sandboxed node keeps what its executors read (bundles, environments,
    their temporary folders), and whether it is a temporary stand-in.

    Executors run as other users: every folder above these must let others pass
    (``o+x``). When the state folder's do not (pytest's ``/tmp/pytest-of-root`` is
    0700), the node keeps them for this run in a folder of its own under the system's
    temporary folder, and removes it when it stops."""
    blocked = unreachable(state_dir)
    if blocked is None:
        state_dir.mkdir(parents=True, exist_ok=True)
        state_dir.chmod(0o711)  # others pass through, but cannot list
        return state_dir, False
    root = Path(tempfile.mkdtemp(prefix=f"superpose-{node_id}-", dir=passable_temp()))
    root.chmod(0o711)
    log.info(
        "sandbox: executors cannot reach %s (%s is mode %o); their bundles and "
        "environments are kept in %s for this run (give the state folder's parents o+x "
        "to keep them across restarts)",
        state_dir,
        blocked,
        blocked.stat().st_mode & 0o777,
        root,
    )
    return root, True


TEMP_CANDIDATES = ("/tmp", "/var/tmp", "/dev/shm")


def passable_temp() -> str:
    """A temporary folder every user may pass through: ``$TMPDIR`` may be a private one
    (a benchmark's scratch folder, 0700), which executors of other users cannot enter."""
    for candidate in (tempfile.gettempdir(), *TEMP_CANDIDATES):
        if Path(candidate).is_dir() and unreachable(Path(candidate) / "x") is None:
            return candidate
    raise UserError(
        f"no temporary folder that other users may pass through ({tempfile.gettempdir()}, "
        f"{', '.join(TEMP_CANDIDATES)}): sandboxed executors need one; use --sandbox none"
    )


def unreachable(folder: Path) -> Path | None:
    """The first existing folder above ``folder`` that others may not pass, if any."""
    for parent in reversed(folder.resolve().parents):
        if parent.exists() and not parent.stat().st_mode & 0o001:
            return parent
    return None


@dataclass
class Identity:
    """One executor's user (uid = gid, no supplementary groups) and private temporary
    folder, held from before its start until its last process is gone. Rootless, the
    node's own uid and gid, and no claim: its processes live in a pid namespace that
    ends with it."""

    uid: int
    gid: int
    tmp: Path
    _claim: socket.socket | None

    @property
    def rootless(self) -> bool:
        return self._claim is None

    async def release(self) -> None:
        """Kill whatever of this user still runs, remove its folder, free the uid."""
        if self._claim is None:  # its namespace's init died with it, and took the rest
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        await kill_all_of(self.uid)
        shutil.rmtree(self.tmp, ignore_errors=True)
        shm.remove_folder(self.uid)  # its offers' shared-memory files, if any are left
        self._claim.close()


def rootless_identity(tmp_root: Path) -> Identity:
    """The node's own uid, and a private folder of the executor's (0700)."""
    tmp_root.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="executor-", dir=tmp_root))
    return Identity(os.getuid(), os.getgid(), tmp, None)


async def claim_identity(tmp_root: Path) -> Identity:
    """A uid no other executor on this machine holds, and its empty private folder."""
    start = random.randrange(UID_COUNT)
    for step in range(UID_COUNT):
        uid = UID_BASE + (start + step) % UID_COUNT
        claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            claim.bind(f"\0{LOCK_PREFIX}{uid}")
        except OSError:
            claim.close()
            continue
        await kill_all_of(uid)  # left by a node that died without cleaning up
        tmp = tmp_root / str(uid)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp_root.mkdir(mode=0o711, parents=True, exist_ok=True)
        tmp.mkdir(mode=0o700)
        os.chown(tmp, uid, uid)
        return Identity(uid, uid, tmp, claim)
    raise UserError(f"all {UID_COUNT} sandbox uids from {UID_BASE} are in use on this machine")


async def kill_all_of(uid: int) -> None:
    """SIGKILL every process of ``uid`` at once: ``kill -KILL -1`` in a shell that runs
    as that uid (it signals all it may, never itself). Only a reserved uid: as root the
    same command would kill every process on the machine."""
    if not UID_BASE <= uid < UID_BASE + UID_COUNT:
        raise ValueError(f"uid {uid} is not a sandbox uid ({UID_BASE}-{UID_BASE + UID_COUNT - 1})")
    shell = await asyncio.create_subprocess_exec(
        *as_user(uid),
        "/bin/sh",
        "-c",
        "kill -KILL -1 2>/dev/null; exit 0",
        env={},
        cwd="/",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await shell.wait()


def as_user(uid: int) -> list[str]:
    """The prefix that runs a command as ``uid`` (and gid), with no supplementary groups
    and no way to gain privileges (set-user-id programs do not). A program, not
    ``subprocess``'s ``user=``: uvloop does not take that, and a ``preexec_fn`` is unsafe
    in a process with threads. setpriv fails rather than run the command unchanged."""
    return [SETPRIV, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs", "--"]


def executor_env(identity: Identity, tmp_inside: str, creds: Path | None = None) -> dict[str, str]:
    """The environment of a sandboxed executor: what Python and locales need, and its
    private folder as HOME and TMPDIR; not the node's (credentials, the state folder).
    ``creds``: its own NATS user's (``executor_creds.py``), else the node's are copied."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name in PASSED_ENV or name.startswith(("LC_", "PYTHON"))
    }
    for name in ("HOME", "TMPDIR", "TEMP", "TMP"):
        env[name] = tmp_inside
    env["USER"] = env["LOGNAME"] = f"superpose-{identity.uid}"
    # The node's files sit in folders only the node can read: the executor gets copies.
    found = config.settings()
    if found.tls_ca is not None:
        env[config.ENV_TLS_CA] = f"{tmp_inside}/{hand_over(identity, found.tls_ca, HANDED_CA)}"
    creds = creds or found.creds
    if creds is not None:
        env[config.ENV_CREDS] = f"{tmp_inside}/{hand_over(identity, creds, HANDED_CREDS)}"
    return env


HANDED_CA = "lattice-ca.pem"
"""The copy of the lattice's CA certificate in a sandboxed executor's private folder."""
HANDED_CREDS = "lattice.creds"
"""The copy of the credentials a sandboxed executor connects with, in the same place."""


def hand_over(identity: Identity, source: Path, name: str) -> str:
    """Copy ``source`` into the executor's private folder as ``name``, readable by its
    user only; the name, relative to that folder (which bwrap mounts elsewhere)."""
    target = identity.tmp / name
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
    with os.fdopen(fd, "wb") as out:
        out.write(source.read_bytes())
    if not identity.rootless:
        os.chown(target, identity.uid, identity.gid)
    return name


SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64")
ETC_FILES = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "ssl",
    "ca-certificates",
    "resolv.conf",
    "hosts",
    "nsswitch.conf",
    "host.conf",
    "gai.conf",
    "mime.types",
)


def python_paths() -> list[str]:
    """Folders this interpreter and its packages (superpose among them) live in."""
    found = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(sys.executable)}
    found.add(os.path.dirname(os.path.realpath(sys.executable)))
    found.update(p for p in sys.path if p)
    # Only those this node can reach: rootless, bwrap opens them as the node's user.
    return sorted(p for p in found if os.path.isdir(p))


def bwrap_argv(
    identity: Identity,
    executor_root: Path,
    relay: Path | None = None,
    hidden: tuple[Path, ...] = (),
) -> list[str]:
    """bubblewrap's arguments: the system's libraries, Python and its packages, and the
    node's bundles and environments, all read-only; a private /tmp (the executor's
    folder); its own pid, IPC, UTS and network namespaces. Its network is a loopback
    only: the lattice is the ``relay`` folder's unix socket, seen at ``INSIDE_FOLDER``
    (``node/lattice_relay.py``). Rootless, a user namespace too, and the ``hidden``
    folders (the node's state and credentials), where a folder shown holds them, are
    covered by an empty one: file modes cannot keep them from the node's own uid."""
    argv = [BWRAP_PROGRAM, "--die-with-parent", "--new-session", "--unshare-pid"]
    if identity.rootless:
        argv += ROOTLESS_FLAGS[:2]
    argv += ["--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--unshare-net"]
    argv += ["--dev", "/dev", "--proc", "/proc"]
    if relay is not None:
        argv += ["--perms", "0755", "--dir", str(Path(INSIDE_FOLDER).parent)]
        argv += ["--ro-bind", str(relay), INSIDE_FOLDER]
    for folder in SYSTEM_DIRS:
        argv += ["--ro-bind-try", folder, folder]
    argv += ["--perms", "0755", "--dir", "/etc"]
    for name in ETC_FILES:
        argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    caches = []
    for cache in ("bundles", "envs"):
        (executor_root / cache).mkdir(parents=True, exist_ok=True)
        caches.append(str(executor_root / cache))
    # /tmp first: the caches may lie under the host's /tmp, and must not be hidden by it
    argv += ["--bind", str(identity.tmp), "/tmp"]
    shown = python_paths()
    argv += _read_only(shown)
    for folder in sorted({str(h) for h in hidden}):  # then the caches, which may lie inside
        if any(Path(folder).is_relative_to(s) for s in shown):
            argv += ["--tmpfs", folder]
    argv += _read_only(caches)
    return [*argv, "--chdir", "/tmp", "--"]


def _read_only(folders: list[str]) -> list[str]:
    """bwrap's arguments showing ``folders`` read-only, their parents made first."""
    argv = []
    for parent in sorted({str(p) for f in folders for p in Path(f).parents if str(p) != "/"}):
        argv += ["--perms", "0755", "--dir", parent]  # bwrap would make them 0700
    for folder in folders:
        argv += ["--ro-bind", folder, folder]
    return argv


def descendant(pid: int) -> int:
    """The innermost process of a chain of only children (bwrap → its init → the
    executor): the one whose memory and stacks are the executor's."""
    with contextlib.suppress(OSError, ValueError):
        while True:
            with open(f"/proc/{pid}/task/{pid}/children") as listing:
                children = listing.read().split()
            if len(children) != 1:
                return pid
            pid = int(children[0])
    return pid


@dataclass
class Confinement:
    """How a node starts its executors: ``mode`` (``user`` or ``bwrap``), with what they
    read under ``root`` (``executor_root``)."""

    mode: str
    root: Path
    temporary: bool = False
    """``root`` is a stand-in for this run (``executor_root``): removed at stop."""
    lattice: str = ""
    """The node's lattice URL: a ``bwrap`` executor reaches it through ``relay``."""
    hidden: tuple[Path, ...] = ()
    """Rootless: the node's folders an executor must not see (its state, its creds, the
    superpose home with the lattice's keys)."""
    relay: LatticeRelay | None = None
    """Opened with the first ``bwrap`` executor, closed by ``close``."""
    _opening: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Executors are claimed concurrently (the spare and a burst): one relay opens."""

    @classmethod
    def for_node(
        cls, mode: str, state_dir: Path, node_id: str, lattice: str = ""
    ) -> Confinement | None:
        """The node's confinement for an effective ``mode`` (None for ``none``)."""
        if mode == NONE:
            return None
        if mode == BWRAP and lattice:
            server_addresses(lattice)  # a URL the relay cannot serve is refused at start
        root, temporary = executor_root(state_dir, node_id)
        found = config.settings()
        hidden: tuple[Path, ...] = (state_dir.resolve(), found.home)  # its keys: in the home
        if found.creds is not None:
            hidden += (found.creds.resolve().parent,)
        return cls(mode, root, temporary, lattice, hidden if os.geteuid() != 0 else ())

    @property
    def rootless(self) -> bool:
        return os.geteuid() != 0

    async def claim(self) -> Identity:
        if self.mode == BWRAP:
            async with self._opening:
                if self.relay is None:
                    self.relay = await LatticeRelay.open(self.root / "relay", self.lattice)
        if self.rootless:
            return rootless_identity(self.root / "tmp")
        return await claim_identity(self.root / "tmp")

    async def close(self) -> None:
        """Close the lattice relay (after the executors) and a stand-in root."""
        if self.relay is not None:
            await self.relay.close()
            self.relay = None
        if self.temporary:
            shutil.rmtree(self.root, ignore_errors=True)

    def command(
        self, argv: list[str], identity: Identity, creds: Path | None = None
    ) -> tuple[list[str], dict[str, object]]:
        """The executor's command line and the process options that confine it: its
        user (``as_user``), a session of its own, and the environment it may see."""
        tmp_inside = "/tmp" if self.mode == BWRAP else str(identity.tmp)
        if not identity.rootless:
            argv = as_user(identity.uid) + argv
        if self.mode == BWRAP:  # bwrap as root: it may mount what the executor may not read
            assert self.relay is not None, "claim() opens the relay"
            argv = bwrap_argv(identity, self.root, self.relay.folder, self.hidden) + argv
            argv += ["--lattice-socket", INSIDE_SOCKET]
        options: dict[str, object] = {
            "start_new_session": True,
            "env": executor_env(identity, tmp_inside, creds),
            "cwd": str(identity.tmp),
        }
        return [*argv, "--sandboxed"], options
