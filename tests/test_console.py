"""What a stage shows on the terminal and what goes to its log file."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.helpers import REPO

SCRIPT = textwrap.dedent("""
    import os, subprocess, sys, warnings
    from pathlib import Path
    from proxyreward_pl.console import captured, say

    log, verbose = Path(sys.argv[1]), sys.argv[2] == "verbose"
    say("before")
    with captured(log, verbose):
        say("stage line")
        print("python print")
        os.write(1, b"fd 1\\n")
        os.write(2, b"fd 2\\n")
        warnings.warn("a library warning")
        subprocess.run([sys.executable, "-c", "print('child process')"], check=True)
        if os.environ.get("FAIL"):
            raise SystemExit("it failed")
    say("after")
""")


def run(tmp_path, mode: str, **env) -> tuple[subprocess.CompletedProcess, str]:
    log = tmp_path / "logs" / "stage.log"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(log), mode], cwd=REPO, capture_output=True, text=True,
                          env={**__import__("os").environ, **env}, timeout=60)
    return proc, log.read_text() if log.exists() else ""


def test_a_captured_stage_shows_only_its_own_lines_and_logs_everything(tmp_path):
    proc, log = run(tmp_path, "quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["before", "stage line", "after"]
    assert proc.stderr == ""
    for text in ("stage line", "python print", "fd 1", "fd 2", "a library warning", "child process"):
        assert text in log, text
    assert "before" not in log and "after" not in log


def test_verbose_captures_nothing(tmp_path):
    proc, log = run(tmp_path, "verbose")
    assert proc.returncode == 0, proc.stderr
    for text in ("stage line", "python print", "fd 1", "child process"):
        assert text in proc.stdout, text
    assert "fd 2" in proc.stderr and "a library warning" in proc.stderr
    assert log == ""


def test_a_failing_stage_names_its_log_on_the_terminal(tmp_path):
    proc, log = run(tmp_path, "quiet", FAIL="1")
    assert proc.returncode == 1
    assert str(tmp_path / "logs" / "stage.log") in proc.stderr and "it failed" in proc.stderr
    assert "fd 1" in log and "fd 1" not in proc.stdout


def test_library_output_during_a_progress_bar_on_a_terminal_goes_to_the_log(tmp_path):
    """On a terminal the progress bar draws there; what a library prints meanwhile (transformers' loading bars)
    still goes to the stage's log, not past it through the bar."""
    import os
    import pty

    script = textwrap.dedent("""
        import sys
        from pathlib import Path
        from proxyreward_pl.asking import Progress
        from proxyreward_pl.console import captured, say

        with captured(Path(sys.argv[1])):
            bar = Progress(2, "working")
            print("library output on stdout")
            print("library output on stderr", file=sys.stderr)
            bar.advance()
            bar.close()
            say("stage line")
    """)
    log = tmp_path / "stage.log"
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", script, str(log)], cwd=REPO, stdout=slave, stderr=slave)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=60) == 0, seen
    terminal = seen.decode(errors="replace")
    assert "stage line" in terminal and "library output" not in terminal
    assert "library output on stdout" in log.read_text() and "library output on stderr" in log.read_text()


def test_a_nested_stage_writes_its_own_log_then_the_outer_one_continues(tmp_path):
    script = textwrap.dedent("""
        import os, sys
        from pathlib import Path
        from proxyreward_pl.console import captured, say

        root = Path(sys.argv[1])
        with captured(root / "run.log"):
            os.write(1, b"before the stage\\n")
            with captured(root / "stage.log"):
                os.write(2, b"in the stage\\n")
                say("stage line")
            os.write(1, b"after the stage\\n")
            if os.environ.get("FAIL"):
                with captured(root / "failing.log"):
                    raise SystemExit("it failed")
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout == "stage line\n", proc.stderr
    assert (tmp_path / "run.log").read_text() == "before the stage\nafter the stage\n"
    assert (tmp_path / "stage.log").read_text() == "in the stage\nstage line\n"
    failed = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                            timeout=60, env={**__import__("os").environ, "FAIL": "1"})
    assert failed.returncode == 1 and f"(the whole output: {tmp_path / 'failing.log'})" in failed.stderr
