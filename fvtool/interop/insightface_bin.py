"""insightface verification sets (`lfw.bin`, `cfp_fp.bin`, `agedb_30.bin`, ...) without unpickling.

The files are a pickle of `(bins, issame_list)`: `bins` a list of encoded images (JPEG/PNG
bytes), two per pair in order a1, b1, a2, b2, ...; `issame_list` a list of bools, one per pair.
A general `pickle.load` on such a file runs any code a planted payload names, so fvtool reads
them with an unpickler that resolves no global (`find_class` refuses all but `_codecs.encode`,
which protocol-2 pickles use to encode bytes): the
only objects it can build are the primitive containers and scalars pickle encodes by opcode
(lists, tuples, bytes, str, bools, ints). The result is then checked for exactly the shape
above. Python-2 era files (str image data) are read with `encoding="bytes"`.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path

from fvtool.atomic import write_bytes
from fvtool.errors import InputError


class UnsafePickleError(InputError):
    """The file asks the unpickler to build an object other than lists/tuples/bytes/bools."""


#: the one global allowed: pickle protocols < 3 encode `bytes` as _codecs.encode(str, "latin1");
#: it only converts text to bytes and runs no user code.
_ALLOWED_GLOBALS = frozenset({("_codecs", "encode")})


class _NoGlobalsUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"refusing to load {module}.{name}: an insightface .bin file holds only lists of bytes and "
            "bools; this file asks for an arbitrary Python object (possibly a malicious payload)"
        )


@dataclass
class VerificationBin:
    images: list[bytes]  # encoded images, 2 per pair
    issame: list[bool]

    @property
    def n_pairs(self) -> int:
        return len(self.issame)


def loads_bin(data: bytes, source: str = "<bytes>") -> VerificationBin:
    try:
        obj = _NoGlobalsUnpickler(io.BytesIO(data), encoding="bytes").load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{source}: {e}") from None
    except Exception as e:  # truncated or not a pickle at all
        raise InputError(f"{source}: not a readable insightface .bin file ({type(e).__name__}: {e})") from None
    if not (isinstance(obj, tuple | list) and len(obj) == 2):
        raise InputError(f"{source}: expected a pair (images, issame), got {type(obj).__name__}")
    bins, issame = obj
    if not isinstance(bins, list | tuple) or not all(isinstance(b, bytes | bytearray) for b in bins):
        raise InputError(f"{source}: the first element must be a list of encoded images (bytes)")
    if not isinstance(issame, list | tuple) or not all(isinstance(s, bool | int) for s in issame):
        raise InputError(f"{source}: the second element must be a list of booleans")
    if len(bins) != 2 * len(issame):
        raise InputError(f"{source}: {len(bins)} images for {len(issame)} pairs (expected 2 per pair)")
    return VerificationBin([bytes(b) for b in bins], [bool(s) for s in issame])


def read_bin(path: str | Path) -> VerificationBin:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    return loads_bin(path.read_bytes(), str(path))


def write_bin(path: str | Path, images: list[bytes], issame: list[bool]) -> None:
    """Write the insightface layout (protocol 4, readable by insightface's own loader)."""
    if len(images) != 2 * len(issame):
        raise InputError(f"{len(images)} images for {len(issame)} pairs (expected 2 per pair)")
    payload = pickle.dumps(([bytes(b) for b in images], [bool(s) for s in issame]), protocol=4)
    write_bytes(path, payload)
