"""Relaxation in a child process, so that a back end that crashes (LAMMPS can
segfault) or hangs costs one structure, not the worker and its partition.

``IsolatedRelaxer`` keeps one child (``python -m legodask.energy.isolate``) per
model, builds the calculator there once, and sends it one structure at a time.  A
child that dies is restarted and the structure retried ``settings.retries`` times,
then recorded as failed; a child that does not answer within the time-out is killed
and the structure recorded as timed out.  The child is a plain subprocess (not
``multiprocessing``), which dask's daemonic worker processes are allowed to start.
Messages are length-prefixed pickles on the child's stdin and on a private copy of
its stdout; anything the back end prints goes to its stderr.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any, BinaryIO

from ase import Atoms

from .model import EnergyModel
from .relax import RelaxResult, RelaxSettings, relax

_HEADER = struct.Struct("!Q")
STARTUP_TIMEOUT = 300.0
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class ChildDied(RuntimeError):
    """The child process exited while working."""


class ChildTimeout(RuntimeError):
    """The child did not answer in time."""


def _send(stream: BinaryIO, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, left = [], n
    while left:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([fd], [], [], wait)
        if not ready:
            raise ChildTimeout()
        chunk = os.read(fd, left)
        if not chunk:
            raise ChildDied()
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _receive(fd: int, deadline: float | None) -> Any:
    (n,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
    return pickle.loads(_read_exact(fd, n, deadline))


class IsolatedRelaxer:
    """Relax structures with ``model`` in a child process (restarted when it dies)."""

    def __init__(self, model: EnergyModel, settings: RelaxSettings = RelaxSettings(),
                 startup_timeout: float = STARTUP_TIMEOUT):
        self.model = model
        self.settings = settings
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None
        self._broken: str | None = None    # the calculator cannot be built at all
        native = settings.relaxer != "ase" and model.make_relaxer is not None
        self.relaxer = "lammps" if native else "ase"   # what the child runs

    # -- child life cycle ----------------------------------------------------
    def _start(self) -> None:
        # one structure at a time per child: parallelism comes from dask workers
        env = {**{k: "1" for k in _THREAD_VARS}, **os.environ,
               "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._log = tempfile.TemporaryFile()
        self._proc = subprocess.Popen([sys.executable, "-m", "legodask.energy.isolate"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._log, env=env, bufsize=0)
        try:
            _send(self._proc.stdin, (self.model, self.settings))
            status, message = _receive(self._proc.stdout.fileno(),
                                       time.monotonic() + self.startup_timeout)
        except ChildTimeout:
            status, message = "failed", f"did not start in {self.startup_timeout:g} s"
        except (ChildDied, BrokenPipeError):
            status, message = "failed", self._death()
        if status != "ready":
            self._broken = message
            self._stop()

    def _stop(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            for stream in (self._proc.stdin, self._proc.stdout):
                stream.close()
        if self._log is not None:
            self._log.close()
        self._proc, self._log = None, None

    def _death(self) -> str:
        """Why the child died: its signal or exit code and the last line it printed."""
        rc = self._proc.wait() if self._proc is not None else None
        if rc is not None and rc < 0:
            how = f"killed by {signal.Signals(-rc).name}"
        else:
            how = f"exited with code {rc}"
        tail = ""
        if self._log is not None:
            self._log.seek(0, os.SEEK_END)
            self._log.seek(max(0, self._log.tell() - 400))
            lines = self._log.read().decode(errors="replace").strip().splitlines()
            tail = f": {lines[-1][:200]}" if lines else ""
        return f"process {how}{tail}"

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            try:
                _send(self._proc.stdin, None)
                self._proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._stop()

    def __enter__(self) -> IsolatedRelaxer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- work ----------------------------------------------------------------
    def relax(self, atoms: Atoms) -> RelaxResult:
        """Relax one structure in the child; crashes and hangs become failed results."""
        deaths: list[str] = []
        t0 = time.monotonic()
        kill_after = self.settings.timeout * 1.1 + 2.0
        for _ in range(self.settings.retries + 1):
            try:
                if self._proc is None:
                    if self._broken is None:
                        self._start()
                    if self._broken is not None:
                        return RelaxResult(error=f"model {self.model.name} unusable: "
                                                 f"{self._broken}"[:500], relaxer=self.relaxer)
                _send(self._proc.stdin, atoms)
                return _receive(self._proc.stdout.fileno(), time.monotonic() + kill_after)
            except ChildTimeout:
                self._stop()
                return RelaxResult(error=f"timed out after {self.settings.timeout:g} s "
                                         f"(child process killed)",
                                   seconds=time.monotonic() - t0, relaxer=self.relaxer)
            except (ChildDied, BrokenPipeError, EOFError, pickle.UnpicklingError):
                deaths.append(self._death())
                self._stop()
        return RelaxResult(error=f"{'; '.join(deaths)} (tried {len(deaths)} times)"[:500],
                           seconds=time.monotonic() - t0, relaxer=self.relaxer)


def _serve() -> None:
    """The child: build the calculator (and the back end's own relaxer, unless the
    settings ask for ASE's), then relax what arrives until ``None``."""
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())   # back-end prints go to stderr
    inp = sys.stdin.buffer.fileno()
    model, settings = _receive(inp, None)
    try:
        native = (model.make_relaxer(settings)
                  if settings.relaxer != "ase" and model.make_relaxer is not None else None)
        calc = model.calculator() if native is None else None
    except Exception as exc:
        _send(out, ("failed", f"{type(exc).__name__}: {exc}"))
        return
    _send(out, ("ready", None))
    while True:
        try:
            atoms = _receive(inp, None)
        except ChildDied:
            return
        if atoms is None:
            return
        if native is not None:
            _send(out, native(atoms))
            continue
        _send(out, relax(atoms, calc, settings))
        if not model.reuse:
            calc = model.calculator()


if __name__ == "__main__":
    _serve()
