"""Warm trial starts: each sweep worker keeps one fork server that has imported the heavy libraries (torch,
transformers, peft, datasets, lm_eval, the trackers', Optuna's storage and harness's train/eval modules) and
filled their first-use caches (harness/sweep/preimport.py), and forks a child per trial, so a trial
is still its own process but pays no import. The worker drives the child through `WarmProcess`, which has the
surface of the subprocess.Popen it used before (pid, stdout, poll, wait, returncode, send_signal, terminate, kill).

    harness sweep sweeps/quickstart.yaml --workers 2     # every worker starts trials warm (also Slurm array tasks)
    harness sweep sweeps/quickstart.yaml --cold          # or HARNESS_SWEEP_COLD=1: a fresh `python -m harness train`

The child is made to look like a fresh `python -m harness train ARGS`: its argv (sys.argv, sys.orig_argv), its
environment (the server runs in the very environment each trial gets; a trial whose environment differs starts
cold, because libraries read some variables at import, e.g. libgomp's OMP_NUM_THREADS), its cwd, its stdin and
stdout/stderr (the worker's pipe, passed over a Unix socket with socket.send_fds), Python's default SIGINT/SIGTERM
handlers, its process group (the worker's, as a Popen child's), PR_SET_PDEATHSIG (the server dies with its worker,
a child with its server), atexit handlers and exit code or death by signal (the server reaps the child and sends
the status back). A child that ends through exit_trial also writes its exit code to a pipe of its own just before
`os._exit`, and closes its stdout first: the worker takes the code from there, so it does not wait for the kernel
to tear the process down (freeing a trial's 2-3 GB of 4 KiB pages: 0.1-0.2 s, measured 0.116 s after a SmolLM2
full fine-tune); a child that dies otherwise (a signal, a crash) reports nothing and its status comes from the
server as before. Python's `random` reseeds itself after a fork and numpy's global generator is reseeded here;
torch's default generator is untouched (a fresh process starts it from a fixed seed, and the server draws from it
never); the trainer seeds all three from train.seed anyway. Only the string hash seed (PYTHONHASHSEED) is shared by
the children of one server.

What a trial loaded that the next ones will load again (its tokenizer) it tells the server over one more pipe of
its own (harness/model/preload.py); once that trial has closed it (exit_trial), the server loads the same, and each
later child is forked with it: the next trial takes it instead of loading it (0.13-0.20 s of each SmolLM2 trial).

Fork safety: the server runs no torch op and starts no thread; after its imports it forks once (a child that
exits at once: libraries that stop their own threads at a fork do so, e.g. numpy's and scipy's OpenBLAS pools,
which start at import unless OMP_NUM_THREADS=1, re-created in a child on first use), then checks that the only
threads left are the known fork-aware ones (pyarrow's jemalloc background thread) and that CUDA is not
initialized (preimport.fork_hazards), else it refuses and the worker starts its trials cold, saying why once; it
checks again after each load of what a trial told it, and refuses the next fork if that left a thread. If the server dies (killed,
crashed), its running child dies with it (recorded as killed by SIGKILL, the reason says why) and later trials
start cold.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable

from harness.sweep import preimport

COLD_ENV = "HARNESS_SWEEP_COLD"  # 1: every trial in a fresh process (also `harness sweep --cold`)
READY_TIMEOUT_S = 600.0
MAX_MSG = 1 << 20
REAP_WAIT_S = 10.0  # how long a new start waits for the reap of a child that reported its exit code


def cold_requested() -> bool:
    return os.environ.get(COLD_ENV, "").strip().lower() not in ("", "0", "false", "no")


def default_train_command() -> list[str]:
    """The command a cold trial runs; a warm child stands in for exactly this one."""
    return [sys.executable, "-m", "harness", "train"]


# ------------------------------------------------------------------------------ worker side
class WarmProcess:
    """One warm child as the worker sees it: the subset of subprocess.Popen that harness/sweep/worker.py uses."""

    def __init__(self, server: "ForkServer", pid: int, args: list[str], stdout, exit_fd: int | None = None) -> None:
        self.server, self.pid, self.args, self.stdout = server, pid, args, stdout
        self.exit_fd = exit_fd  # read end of the pipe the child writes its exit code to (exit_trial)
        self.returncode: int | None = None
        self.note = ""  # set when the child's fate came from its server's death, not from its own exit

    def close_exit_fd(self) -> None:
        if self.exit_fd is not None:
            os.close(self.exit_fd)
            self.exit_fd = None

    def ended(self, returncode: int, note: str = "") -> None:
        """Its fate is known (the exit pipe, the server's "exited", the server's death): the code, and why."""
        self.close_exit_fd()
        self.returncode, self.note = returncode, note

    def poll(self) -> int | None:
        if self.returncode is None:
            self.server.pump(0.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        end = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self.server.pump(left if left is None else min(left, 1.0))
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # not reaped yet by the server, so the pid is still this child's
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """The worker's handle on its fork server (`python -m harness.sweep.warm FD`), started in `env`."""

    def __init__(self, env: dict[str, str], preexec: Callable[[], None] | None = None) -> None:
        self.env = dict(env)
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.errors = tempfile.TemporaryFile()  # the server's own stderr (import warnings, a crash): never blocks it
        self.proc = subprocess.Popen([sys.executable, "-m", "harness.sweep.warm", str(theirs.fileno())],
                                     pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self.errors, env=self.env, preexec_fn=preexec)
        theirs.close()
        self.lock = threading.RLock()
        self.children: dict[int, WarmProcess] = {}
        self.ready: dict | None = None
        self.failure = ""  # why it cannot start trials (once set, for good)
        self._started: list[dict] = []
        self._unreaped: set[int] = set()  # children that reported their exit code, until the server reaps them
        self._early_exits: dict[int, int] = {}  # "exited" read before start() registered its child: pid -> code

    # -------------------------------------------------------------------- messages
    def pump(self, timeout: float | None) -> None:
        """Read the server's messages for up to `timeout` seconds (0: what is there); marks it dead on EOF."""
        with self.lock:
            if self.failure:
                return
            reporting = {c.exit_fd: c for c in self.children.values() if c.exit_fd is not None}
            readable, _, _ = select.select([self.sock, *reporting], [], [], timeout)
            for fd in readable:
                if fd in reporting:
                    self._reported(reporting[fd])
            while self.sock in readable:
                try:
                    data = self.sock.recv(MAX_MSG)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    data, why = b"", f"{type(exc).__name__}: {exc}"
                else:
                    why = ""
                if not data:
                    self._died(why)
                    return
                self._handle(json.loads(data))
                readable, _, _ = select.select([self.sock], [], [], 0)

    def _reported(self, child: WarmProcess) -> None:
        """The child's exit pipe is readable: its exit code (written by exit_trial just before os._exit) ends it now;
        an empty read means it died without reporting, and the server's "exited" message will say how."""
        try:
            data = os.read(child.exit_fd, 16)
        except OSError:
            data = b""
        child.close_exit_fd()
        if data.isdigit():  # exit_trial writes rc & 0xFF
            self.children.pop(child.pid, None)  # the server's "exited" for this pid then only ends _unreaped
            self._unreaped.add(child.pid)
            child.ended(int(data))

    def _handle(self, msg: dict) -> None:
        if "ready" in msg:
            self.ready = msg
        elif "error" in msg:
            self.failure = msg["error"]
        elif "started" in msg:
            self._started.append(msg)
        elif "exited" in msg:
            pid = msg["exited"]
            child = self.children.pop(pid, None)
            if child is not None:
                child.ended(msg["returncode"])
            elif pid in self._unreaped:
                self._unreaped.discard(pid)
            else:  # its "started" came in the same read: start() registers it next and takes the code from here
                self._early_exits[pid] = msg["returncode"]

    def _died(self, why: str) -> None:
        rc = self.proc.poll()
        if rc is None:
            try:
                rc = self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                rc = None
        err = b""
        try:
            self.errors.seek(0)
            err = self.errors.read()[-4000:]
        except (OSError, ValueError):
            pass
        last = [ln for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()][-1:]
        how = (f"killed by {signal.Signals(-rc).name}" if rc is not None and rc < 0 else f"exit code {rc}") + (
            f": {last[0][:300]}" if last else "") + (f" ({why})" if why else "")
        self.failure = self.failure or f"the warm fork server (pid {self.proc.pid}) died ({how})"
        for child in self.children.values():  # PR_SET_PDEATHSIG: a child dies with its server
            child.ended(-signal.SIGKILL, f"[harness] the warm fork server (pid {self.proc.pid}) died while this trial "
                                         f"ran ({how}); its child was killed with it (PR_SET_PDEATHSIG)")
        self.children.clear()

    def wait_ready(self, timeout: float = READY_TIMEOUT_S, stop: Callable[[], bool] = lambda: False) -> bool:
        """Wait for the server's imports; False if it failed (self.failure says why) or `stop()` became true."""
        end = time.monotonic() + timeout
        while self.ready is None and not self.failure and not stop():
            left = end - time.monotonic()
            if left <= 0:
                self.failure = f"the warm fork server did not finish its imports within {timeout:.0f} s"
                self.close()
                break
            self.pump(min(left, 1.0))
        return self.ready is not None and not self.failure

    # -------------------------------------------------------------------- trials
    def start(self, args: list[str], env: dict[str, str], cwd: str) -> WarmProcess | None:
        """Fork a child that runs `harness ARGS`; None if the server cannot (self.failure says why)."""
        if not self.wait_ready():
            return None
        self._wait_reaped()
        read_end, write_end = os.pipe()
        exit_read, exit_write = os.pipe()  # the child's exit code, written just before it exits (exit_trial)
        stdin = 0 if _valid_fd(0) else os.open(os.devnull, os.O_RDONLY)
        kept = False  # whether the child's WarmProcess holds read_end and exit_read
        try:
            # an ignored SIGINT stays ignored across exec (a worker in a shell's background): the child's too
            ignored = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            request = json.dumps({"args": args, "env": env, "cwd": cwd, "sigint_ignored": ignored}).encode()
            with self.lock:
                try:
                    socket.send_fds(self.sock, [request], [stdin, write_end, exit_write])
                except OSError as exc:
                    self._died(f"{type(exc).__name__}: {exc}")
                    return None
                while not self._started and not self.failure:
                    self.pump(1.0)
                if self.failure:
                    return None
                pid = self._started.pop(0)["started"]
                child = WarmProcess(self, pid, [*default_train_command()[:3], *args], os.fdopen(read_end, "rb"), exit_read)
                kept = True
                if pid in self._early_exits:  # it ended before we registered it (killed at once)
                    child.ended(self._early_exits.pop(pid))
                else:
                    self.children[pid] = child
                return child
        finally:
            os.close(write_end)
            os.close(exit_write)
            if not kept:
                os.close(read_end)
                os.close(exit_read)
            if stdin != 0:
                os.close(stdin)

    def _wait_reaped(self) -> None:
        """Wait (up to REAP_WAIT_S) until the server has reaped every child that reported its exit code. Such a child
        may still be freeing its memory (and, on a GPU, its CUDA context: in EXCLUSIVE_PROCESS compute mode the next
        trial could not start one): the next start waits for it, and so does the worker's end, which leaves no child
        of its own behind. Telling the study and taking the next trial ran meanwhile, so this is usually over."""
        end = time.monotonic() + REAP_WAIT_S
        while self._unreaped and not self.failure and time.monotonic() < end:
            self.pump(max(0.0, min(1.0, end - time.monotonic())))

    def close(self) -> None:
        """Stop the server (its running children die with it) and reap it; children that reported their exit code
        are reaped first (_wait_reaped)."""
        self._wait_reaped()
        self.failure = self.failure or "closed"
        for child in self.children.values():  # still running: it dies with the server (PR_SET_PDEATHSIG)
            child.ended(-signal.SIGKILL,
                        f"[harness] the warm fork server (pid {self.proc.pid}) was stopped while this trial ran")
        self.children.clear()
        try:
            self.sock.close()
        except OSError:
            pass
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.errors.close()


def _valid_fd(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


class Starter:
    """Starts a worker's trials: warm from its fork server when it can, else cold (subprocess.Popen). `note` is
    called once, with the reason, when the worker falls back to cold starts."""

    def __init__(self, env: dict[str, str], warm: bool = True, note: Callable[[str], None] = print,
                 preexec: Callable[[], None] | None = None) -> None:
        self.env, self.note, self.preexec = dict(env), note, preexec
        self.server: ForkServer | None = ForkServer(self.env, preexec) if warm else None
        self.cold_reason = ""

    def wait_ready(self, stop: Callable[[], bool] = lambda: False) -> bool:
        """Before the first trial is taken (so its heartbeat never waits on the imports): True when warm."""
        if self.server is None or self.cold_reason:
            return False
        if not self.server.wait_ready(stop=stop) and self.server.failure:
            self._go_cold(self.server.failure)
        return self.warm

    def _go_cold(self, why: str) -> None:
        if not self.cold_reason:
            self.cold_reason = why
            self.note(f"starting trials cold from now on: {why}")
        if self.server is not None:
            self.server.close()

    def popen(self, cmd: list[str], env: dict[str, str]):
        """A running trial child of `cmd` in `env`, its stdout and stderr on one pipe (proc.stdout)."""
        server = self.server
        if server is not None and not self.cold_reason and cmd[:4] == default_train_command():
            if env != self.env:
                changed = sorted(k for k in set(env) | set(self.env) if env.get(k) != self.env.get(k))
                self._go_cold(f"the trial's environment differs from the fork server's ({', '.join(changed[:5])})")
            else:
                child = server.start(cmd[3:], env, os.getcwd())
                if child is not None:
                    return child
                self._go_cold(server.failure)
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, preexec_fn=self.preexec)

    @property
    def warm(self) -> bool:
        return self.server is not None and not self.cold_reason and not self.server.failure

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


# ------------------------------------------------------------------------------ server side
def _send(sock: socket.socket, msg: dict) -> None:
    sock.send(json.dumps(msg).encode())


def serve(sock: socket.socket) -> dict | None:
    """The server's loop: fork a child per request, report its pid and, once reaped, its exit status. Returns
    the request in the child (which then becomes the trial); None in the server when the worker has gone."""
    for s in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C reaches the whole group: the worker decides, not us
        signal.signal(s, signal.SIG_IGN)
    t0 = time.perf_counter()
    try:
        preimport.import_libraries()
        preimport.warm_up()
    except BaseException as exc:  # noqa: BLE001 - any import failure means cold starts, with the reason
        _send(sock, {"error": f"the warm fork server could not import the libraries: {type(exc).__name__}: {exc}"})
        return None
    probe = os.fork()  # libraries that stop their threads at a fork do it now (OpenBLAS: pthread_atfork)
    if probe == 0:
        os._exit(0)
    os.waitpid(probe, 0)
    hazards = preimport.fork_hazards()
    if hazards:
        _send(sock, {"error": "the warm fork server is not safe to fork: " + "; ".join(hazards)})
        return None
    import gc

    gc.collect()
    gc.freeze()  # the imports' objects: no collection in a child walks them (and copies their pages), gc docs' advice
    _send(sock, {"ready": True, "pid": os.getpid(), "import_s": round(time.perf_counter() - t0, 3)})

    children: dict[int, int] = {}  # pid -> pidfd
    hints: dict[int, bytearray] = {}  # read end of a child's hint pipe -> what it wrote so far (preload.loaded)
    unsafe = ""  # why this server forks no more (told at the next request, when no child of its worker runs)
    me = os.getpid()
    while True:
        readable, _, _ = select.select([sock, *children.values(), *hints], [], [])
        for pid, pidfd in list(children.items()):
            if pidfd in readable:
                _, status = os.waitpid(pid, 0)
                os.close(pidfd)
                del children[pid]
                _send(sock, {"exited": pid, "returncode": os.waitstatus_to_exitcode(status)})
        for fd in [fd for fd in hints if fd in readable]:
            data = os.read(fd, 1 << 16)
            if data:
                hints[fd] += data
            else:  # the trial closed it (exit_trial) or ended: load what it loaded, while the worker records it
                _keep_hinted(bytes(hints.pop(fd)))
                os.close(fd)
                hazards = preimport.fork_hazards()  # a load that left a thread behind: no more forks from here
                if hazards and not unsafe:
                    unsafe = ("the warm fork server is not safe to fork after loading what a trial loaded: "
                              + "; ".join(hazards))
        if sock not in readable:
            continue
        data, fds, _, _ = socket.recv_fds(sock, MAX_MSG, 4)
        if not data:
            return None  # the worker closed its end: our children die with us (PR_SET_PDEATHSIG)
        request = json.loads(data)
        if unsafe:
            for fd in fds:
                os.close(fd)
            _send(sock, {"error": unsafe})
            return None
        sys.stdout.flush()
        sys.stderr.flush()
        hint_read, hint_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            for fd in [*children.values(), *hints, hint_read]:
                os.close(fd)
            sock.close()
            return {**request, "fds": fds, "server": me, "hint_fd": hint_write}
        for fd in (*fds, hint_write):
            os.close(fd)
        hints[hint_read] = bytearray()
        children[pid] = os.pidfd_open(pid)
        _send(sock, {"started": pid})


def _keep_hinted(data: bytes) -> None:
    """In the server: load what a trial told it it loaded (one JSON hint per line, harness/model/preload.py), kept
    for the children forked next. A hint only saves time: whatever fails here, the next trial loads it itself."""
    import gc

    from harness.model.load import keep_tokenizer

    for line in data.splitlines():
        try:
            hint = json.loads(line)
            if hint.get("kind") == "tokenizer":
                keep_tokenizer(hint)
        except Exception:  # noqa: BLE001 - see above
            pass
    gc.collect()
    gc.freeze()  # as the imports' objects: no collection in a child walks them


def become_trial(request: dict) -> list[str]:
    """In the forked child: take on the process state of a fresh `python -m harness train ARGS`; returns ARGS."""
    from harness.run.parent import set_parent_death_signal

    if not set_parent_death_signal(signal.SIGKILL, request["server"]) and os.getppid() != request["server"]:
        os.kill(os.getpid(), signal.SIGKILL)  # die with the server, also where the kernel cannot be asked to
    global _EXIT_FD
    stdin, out, *rest = request["fds"]
    if rest:  # where exit_trial reports the exit code; not inherited by the trial's own subprocesses
        _EXIT_FD = rest[0]
        os.set_inheritable(_EXIT_FD, False)
    os.dup2(stdin, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    for fd in (stdin, out):
        if fd > 2:
            os.close(fd)
    from harness.model import preload

    preload.tell_server(request.get("hint_fd"))  # what this trial loads that the next ones would load again
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    # as a fresh interpreter has them: Python's KeyboardInterrupt handler, unless SIGINT came in ignored
    signal.signal(signal.SIGINT, signal.SIG_IGN if request.get("sigint_ignored") else signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()  # a fresh process seeds it from the OS; `random` reseeds itself after fork
    import importlib.util

    args = list(request["args"])
    sys.argv = [importlib.util.find_spec("harness.__main__").origin, *args]  # as `python -m harness` sets it
    sys.orig_argv = [sys.executable, "-m", "harness", *args]
    if sys.path and sys.path[0] and not sys.flags.safe_path:
        sys.path[0] = request["cwd"]  # `python -m` puts the cwd of its start first on the path
    return args


_EXIT_FD: int | None = None  # in a child: the pipe its exit code goes to (become_trial)


def exit_trial(rc: int) -> None:
    """End the child as the interpreter's exit would, minus the teardown of every module (2.7-4 s on the 2-core
    machine, for the ~4,300 modules of torch, transformers, lm_eval...): non-daemon threads are joined and atexit
    handlers run (trackers, logging), garbage in cycles is collected (its finalizers run), stdio is flushed. Then
    stdio is closed (the worker's pipe ends now) and the exit code goes to the worker's exit pipe (module
    docstring): the worker goes on while the kernel frees the process's memory."""
    import atexit
    import gc

    threading._shutdown()  # what Py_FinalizeEx does first  # noqa: SLF001
    atexit._run_exitfuncs()  # noqa: SLF001
    gc.collect()  # what is left of the trial's own objects (the server's are frozen: gc.freeze)
    from harness.model import preload

    preload.tell_server(None)  # the server loads what this trial told it now, while the worker records the trial
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if _EXIT_FD is not None:
        # no Ctrl-C / SIGTERM between the report and the exit (the status would differ from the code reported)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        for fd in (0, 1, 2):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.write(_EXIT_FD, str(rc & 0xFF).encode())  # what os._exit(rc) leaves as the exit status
        except OSError:
            pass
    os._exit(rc)


def main(fd: int) -> int:
    sock = socket.socket(fileno=fd)
    request = serve(sock)
    if request is None:
        return 0
    args = become_trial(request)
    from harness.cli import main as harness_main

    try:
        rc = harness_main(args)
    except SystemExit as exc:  # as the interpreter maps sys.exit(...) to an exit code
        code = exc.code
        rc = 0 if code is None else code if isinstance(code, int) else 1
        if not isinstance(code, (int, type(None))):
            print(code, file=sys.stderr)
    except KeyboardInterrupt:  # uncaught: a fresh interpreter prints the traceback and dies by SIGINT
        import traceback

        traceback.print_exc()
        threading._shutdown()  # noqa: SLF001
        import atexit

        atexit._run_exitfuncs()  # noqa: SLF001
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        rc = 130
    except BaseException:  # noqa: BLE001 - uncaught: a fresh interpreter prints the traceback, exits 1
        sys.excepthook(*sys.exc_info())
        rc = 1
    exit_trial(int(rc) & 0xFF if isinstance(rc, int) else 1)
    return rc


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
