"""The executor ends a call's stray processes only when there are some: as a child
subreaper, a process its calls started (double-forked, in a session of its own) stays
its child, so "none left" is one ``waitpid`` instead of a ``kill(-1)`` scan."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

DAEMON = (
    "import os, sys, time\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    open(sys.argv[1], 'w').write(str(os.getpid()))\n"
    "    time.sleep(60)\n"
)


def test_a_subreaper_sees_a_double_forked_stray_and_none_once_it_is_reaped(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "daemon.pid"
    script = textwrap.dedent(
        f"""
        import os, signal, subprocess, sys, time
        from superpose.node.executor import confine

        confine._become_subreaper()
        assert confine._subreaper, "prctl(PR_SET_CHILD_SUBREAPER) failed"
        assert not confine._descendants_left()
        # its parent exits at once; it runs on, in a session of its own
        subprocess.run([sys.executable, "-c", {DAEMON!r}, {str(pid_file)!r}], check=True)
        assert confine._descendants_left(), "the orphan was not reparented here"
        pid_file = {str(pid_file)!r}
        while not (os.path.exists(pid_file) and os.path.getsize(pid_file)):
            time.sleep(0.01)
        os.kill(int(open(pid_file).read()), signal.SIGKILL)
        confine._reap(5.0)
        assert not confine._descendants_left()
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
