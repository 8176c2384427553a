"""Control messages of a disaggregated deployment: length-prefixed JSON frames, never pickle.

Role in the data flow: every control message between the router and its workers (over a
`socket.socketpair()` inherited by the spawned worker: no network, only the parent holds the other
end) and between a prefill worker and a decode worker (a TCP connection to the decode worker's
listening socket, which accepts a peer only after it sent the deployment's random token) is one
frame: 4-byte big-endian length + UTF-8 JSON object with a "type" key. Nothing read from a socket is
ever unpickled. KV data itself does not go through here (see transport.py).

Also: `SamplingParams` <-> plain dict, and the shared-memory segment helper used for KV pools
(`ShmSegment`: POSIX shm_open + mmap, no multiprocessing resource tracker process; the creator or
the router unlinks it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import mmap
import os
import socket
import struct
import threading

_HDR = struct.Struct(">I")
MAX_FRAME = 64 * 2**20


class PeerClosed(ConnectionError):
    """The other end closed the connection (or died)."""


def encode(msg: dict) -> bytes:
    data = json.dumps(msg, separators=(",", ":")).encode("utf-8")
    return _HDR.pack(len(data)) + data


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise PeerClosed("connection closed")
        buf += chunk
    return bytes(buf)


def recv_msg(sock: socket.socket) -> dict:
    (n,) = _HDR.unpack(_recv_exact(sock, _HDR.size))
    if n > MAX_FRAME:
        raise PeerClosed(f"frame of {n} bytes refused")
    msg = json.loads(_recv_exact(sock, n).decode("utf-8"))
    if not isinstance(msg, dict):
        raise PeerClosed("frame is not a JSON object")
    return msg


class MsgSocket:
    """A blocking socket with a send lock (several threads send, one thread receives)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()

    def send(self, msg: dict) -> None:
        data = encode(msg)
        with self._lock:
            self.sock.sendall(data)

    def recv(self) -> dict:
        return recv_msg(self.sock)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


async def async_recv(reader: asyncio.StreamReader) -> dict:
    try:
        hdr = await reader.readexactly(_HDR.size)
        (n,) = _HDR.unpack(hdr)
        if n > MAX_FRAME:
            raise PeerClosed(f"frame of {n} bytes refused")
        data = await reader.readexactly(n)
    except asyncio.IncompleteReadError as e:
        raise PeerClosed("connection closed") from e
    msg = json.loads(data.decode("utf-8"))
    if not isinstance(msg, dict):
        raise PeerClosed("frame is not a JSON object")
    return msg


def check_token(sent: object, token: str) -> bool:
    return isinstance(sent, str) and hmac.compare_digest(sent.encode(), token.encode())


# ---- sampling params ---------------------------------------------------------------------------

def params_to_dict(params) -> dict:
    return dataclasses.asdict(params)


def params_from_dict(d: dict):
    from ..sampling import SamplingParams
    known = {f.name for f in dataclasses.fields(SamplingParams)}
    return SamplingParams(**{k: v for k, v in d.items() if k in known})


# ---- shared memory -----------------------------------------------------------------------------

class ShmSegment:
    """A named POSIX shared-memory segment mapped into this process (no resource tracker)."""

    def __init__(self, name: str, size: int = 0, create: bool = False) -> None:
        import _posixshmem

        self.name = name if name.startswith("/") else "/" + name
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = _posixshmem.shm_open(self.name, flags, mode=0o600)
        try:
            if create:
                os.ftruncate(fd, size)
            else:
                size = os.fstat(fd).st_size
            self.size = size
            self.mmap = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.buf = memoryview(self.mmap)

    def unlink(self) -> None:
        unlink_shm(self.name)


def unlink_shm(name: str) -> bool:
    import _posixshmem

    try:
        _posixshmem.shm_unlink(name if name.startswith("/") else "/" + name)
        return True
    except FileNotFoundError:
        return False
