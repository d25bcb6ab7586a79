"""The install, as the README gives it: a build without setuptools warnings, ``pipx install .``
and ``uv tool install .`` (both installed from the package index into a venv of the test's own),
shell completion, and ``--version`` naming the Claude Code releases checked against."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.agentproc import REPO, credsync

CHECKED = "checked against Claude Code 2.1.332 and 2.1.37"


def copy_checkout(target: Path) -> Path:
    """The checkout's tracked and new files: building in place would leave build/ behind."""
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard"],
                           check=True, capture_output=True, text=True).stdout.splitlines()
    for name in files:
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes((REPO / name).read_bytes())
    return target


def venv(path: Path, *packages: str) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    if packages:
        out = subprocess.run([str(path / "bin" / "pip"), "install", "-q", *packages],
                             capture_output=True, text=True, timeout=500)
        if out.returncode != 0 and "No matching distribution" in out.stderr:
            pytest.skip(f"no package index reachable: {out.stderr.strip()[-200:]}")
        assert out.returncode == 0, out.stderr
    return path / "bin"


def test_version_names_the_claude_code_releases_checked_against() -> None:
    out = credsync(["--version"])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert re.fullmatch(r"credsync \d+\.\d+\.\d+", lines[0]), lines
    assert lines[1] == CHECKED


def test_shell_completion_prints_a_script() -> None:
    # click names the variable after the program: the console script is called credsync.
    run = "import sys; sys.argv[0] = 'credsync'; from agent.cli.fastpath import main; main()"
    for shell, marker in (("bash", "complete -o nosort -F _credsync_completion credsync"),
                          ("zsh", "compdef _credsync_completion credsync"),
                          ("fish", "complete --no-files --command credsync")):
        out = subprocess.run([sys.executable, "-c", run], cwd=REPO, capture_output=True,
                             text=True, timeout=60,
                             env={**os.environ, "_CREDSYNC_COMPLETE": f"{shell}_source"})
        assert out.returncode == 0, out.stderr
        assert marker in out.stdout, out.stdout


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_the_build_prints_no_setuptools_warning(tmp_path: Path) -> None:
    source = copy_checkout(tmp_path / "src")
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w",
                          str(tmp_path / "wheel"), str(source)],
                         capture_output=True, text=True, timeout=500)
    if out.returncode != 0 and "No matching distribution" in out.stderr:
        pytest.skip(f"no package index reachable: {out.stderr.strip()[-200:]}")
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout + out.stderr
    # -v shows the backend's own output, where setuptools prints its warnings (the old
    # `license = { text = ... }` table gave a SetuptoolsDeprecationWarning there).
    assert "setuptools" in text.lower()
    bad = [x for x in text.splitlines() if re.search(
        r"deprecat|BuildBackendWarning|SetuptoolsWarning|License classifiers", x, re.I)]
    assert bad == [], "\n".join(bad)
    assert list((tmp_path / "wheel").glob("credsync-*.whl"))


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_pipx_install_and_uv_tool_install_give_a_working_credsync(tmp_path: Path) -> None:
    source = copy_checkout(tmp_path / "src")
    tools = venv(tmp_path / "tools", "pipx", "uv")
    env = {**os.environ, "PIPX_HOME": str(tmp_path / "pipx"),
           "PIPX_BIN_DIR": str(tmp_path / "pipx-bin"), "UV_TOOL_DIR": str(tmp_path / "uv"),
           "UV_TOOL_BIN_DIR": str(tmp_path / "uv-bin"), "UV_CACHE_DIR": str(tmp_path / "uvc"),
           "UV_PYTHON_DOWNLOADS": "never", "HOME": str(tmp_path)}
    installs = {
        "pipx-bin": [str(tools / "pipx"), "install", "--python", sys.executable, str(source)],
        "uv-bin": [str(tools / "uv"), "tool", "install", "--python", sys.executable,
                   str(source)],
    }
    for bin_dir, argv in installs.items():
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        program = tmp_path / bin_dir / "credsync"
        # Run from outside the checkout, so that the installed package is the one used.
        version = subprocess.run([str(program), "--version"], cwd=tmp_path, env=env,
                                 capture_output=True, text=True, timeout=60)
        assert version.returncode == 0 and version.stdout.splitlines()[1] == CHECKED, \
            version.stderr
        completion = subprocess.run([str(program)], cwd=tmp_path, capture_output=True,
                                    text=True, timeout=60,
                                    env={**env, "_CREDSYNC_COMPLETE": "bash_source"})
        assert "complete -o nosort -F _credsync_completion credsync" in completion.stdout
        doctor = subprocess.run([str(program), "doctor", "--help"], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=60)
        assert doctor.returncode == 0 and "Exit 0 when nothing fails" in doctor.stdout
