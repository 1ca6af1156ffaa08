"""A fork server for `fvtool`: one process imports fvtool, torch & co. once; every command forks it.

Why: the example scripts run ~140 fvtool commands between them, and on the shared 2-core machine
each `fvtool train`/`embed` process spends 3-5 s importing torch and torchvision before doing
0.2 s of work on the test's tiny data. tests/test_examples.py points the scripts' `FVTOOL` at
the client side of this server, so each command still runs in a process of its own (a fork of
the pre-imported server) with the caller's argv, environment, working directory and stdin /
stdout / stderr, and returns its own exit code; only the imports are shared.

    python tests/fvtool_forkserver.py serve SOCKET      # prints "ready" once listening
    python -S tests/fvtool_forkserver.py client SOCKET ARGS...   # behaves like `fvtool ARGS...`

Not part of fvtool: a test helper (the module has no `test_` prefix, pytest does not collect it).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import sys

_MAX_REQUEST = 1 << 20


def _preload() -> None:
    """Import everything a command may import, so that forks start warm.

    Nothing here may start threads or run torch ops: forking after an OpenMP parallel region can
    hang the child.
    """
    import importlib
    import pkgutil

    import matplotlib

    matplotlib.use("Agg")
    import fvtool
    import fvtool.cli  # registers every command

    for mod in pkgutil.walk_packages(fvtool.__path__, "fvtool."):
        with contextlib.suppress(Exception):  # an optional dependency missing: the command fails the same way
            importlib.import_module(mod.name)
    # and what a first command imports on the way (measured: ~0.2 s a command otherwise)
    for name in ("torch", "torchvision", "facenet_pytorch", "matplotlib.pyplot", "h5py", "sklearn.metrics",
                 "pydantic", "typer._adapters", "rich._emoji_codes", "PIL.JpegImagePlugin", "PIL.PngImagePlugin"):
        with contextlib.suppress(Exception):
            importlib.import_module(name)


def _run_child(argv: list[str], cwd: str, env: dict[str, str], fds: list[int]) -> None:
    """In the forked child: become the caller's `fvtool ARGV` process, then exit with its code."""
    code = 1
    try:
        for target, fd in zip((0, 1, 2), fds, strict=True):
            os.dup2(fd, target)
        for fd in fds:
            os.close(fd)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        sys.argv = ["fvtool", *argv]
        from fvtool.cli import main

        try:
            main(argv)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if not isinstance(e.code, (int, type(None))):
                print(e.code, file=sys.stderr)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("client went away")
        buf += chunk
    return buf


def _handle(conn: socket.socket) -> None:
    """In a handler process (one per connection): run one command in a fork, send back its exit code."""
    fds: list[int] = []
    try:
        (size,) = struct.unpack("!I", _recv_exact(conn, 4))
        if size > _MAX_REQUEST:
            raise ValueError(f"request of {size} bytes")
        msg, fds, _, _ = socket.recv_fds(conn, size, 3)
        msg += _recv_exact(conn, size - len(msg)) if len(msg) < size else b""
        req = json.loads(msg)
        if len(fds) != 3:
            raise ValueError(f"expected stdin/stdout/stderr, got {len(fds)} descriptors")
    except (ValueError, ConnectionError, OSError) as e:
        print(f"forkserver: bad request: {e}", file=sys.stderr, flush=True)
        return
    child = os.fork()
    if child == 0:
        conn.close()
        _run_child(req["argv"], req["cwd"], req["env"], fds)
    for fd in fds:
        os.close(fd)
    _, status, usage = os.wait4(child, 0)
    code = os.waitstatus_to_exitcode(status)
    print(f"rc {code} cpu {usage.ru_utime + usage.ru_stime:6.2f} s: fvtool {' '.join(req['argv'])[:160]}",
          file=sys.stderr, flush=True)  # where a slow test spends its time
    with contextlib.suppress(OSError):
        conn.sendall(struct.pack("!i", code))


def serve(path: str) -> None:
    """Accept commands until killed; several may run at once (one handler process each).

    Stop it by signalling its process group (start it in a session of its own): that ends the
    handlers and the commands in flight too.
    """
    _preload()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # handlers are reaped by the kernel
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(16)
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        if os.fork() == 0:
            srv.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the handler waits for its command
            try:
                _handle(conn)
            finally:
                os._exit(0)
        conn.close()


def client(path: str, argv: list[str]) -> int:
    msg = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError as e:
        print(f"fvtool fork server at {path} is not running: {e}", file=sys.stderr)
        return 1
    with conn:
        conn.sendall(struct.pack("!I", len(msg)))
        socket.send_fds(conn, [msg], [0, 1, 2])
        try:
            (code,) = struct.unpack("!i", _recv_exact(conn, 4))
        except ConnectionError:
            print("fvtool fork server closed the connection", file=sys.stderr)
            return 1
    return code if code >= 0 else 128 - code  # killed by signal N -> 128 + N, as a shell reports it


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "serve":
        serve(sys.argv[2])
    elif len(sys.argv) >= 3 and sys.argv[1] == "client":
        sys.exit(client(sys.argv[2], sys.argv[3:]))
    else:
        sys.exit(__doc__)
