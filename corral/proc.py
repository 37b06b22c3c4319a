"""Running host commands: argv lists only, a timeout on every call, errors that name the command."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Mapping, Sequence

from corral.errors import CorralError, EnvironmentProblem

DEFAULT_TIMEOUT = 120.0


class CommandFailed(CorralError):
    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        tail = stderr.strip().splitlines()[-3:]
        said = " / ".join(tail) or "no output"
        super().__init__(f"`{' '.join(argv)}` exited {returncode}: {said}")
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr


def need(binary: str, package: str) -> str:
    """The path of ``binary``, or an error telling which Debian package to install."""
    path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        raise EnvironmentProblem(
            f"{binary} is not installed; install the Debian package {package} "
            f"(apt-get install {package}) or run scripts/setup"
        )
    return path


def run(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> str:
    """Run a command to completion (blocking: call from a thread in async code)."""
    try:
        proc = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )
    except FileNotFoundError as err:
        raise EnvironmentProblem(f"{argv[0]} is not installed; run scripts/setup") from err
    except subprocess.TimeoutExpired as err:
        raise CorralError(f"`{' '.join(argv)}` did not finish within {timeout:.0f} s") from err
    if check and proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, proc.stderr.decode(errors="replace"))
    return proc.stdout.decode(errors="replace")


async def arun(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    check: bool = True,
) -> str:
    """Run a command from async code without blocking the loop."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError as err:
        raise EnvironmentProblem(f"{argv[0]} is not installed; run scripts/setup") from err
    try:
        out, err_out = await asyncio.wait_for(proc.communicate(input), timeout)
    except TimeoutError as err:
        proc.kill()
        await proc.wait()
        raise CorralError(f"`{' '.join(argv)}` did not finish within {timeout:.0f} s") from err
    if check and proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode or 0, err_out.decode(errors="replace"))
    return out.decode(errors="replace")
