"""The image store: images stored once, named by their SHA-256, each file written, fsynced, renamed
into place and its directory fsynced before the row that references it is committed."""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from pathlib import Path


class StorageUnavailable(Exception):
    """The image store cannot take a write (disk full, read-only or missing data dir). Nothing of
    the request is committed; the camera should retry once an operator has fixed the disk."""

    FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}

    def __init__(self, root: Path, exc: OSError) -> None:
        self.full = exc.errno in self.FULL
        self.code = "storage_full" if self.full else "storage_unavailable"
        super().__init__(
            f"cannot store the image under {root}: {exc.strerror or exc} ({errno.errorcode.get(exc.errno or 0, 'error')}); "
            "nothing was stored"
        )


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a file renamed or created in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ImageStore:
    """Images stored once, named by their SHA-256, under root/ab/cd/<sha>.<ext>."""

    EXT = {"image/jpeg": ".jpg", "image/png": ".png"}

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha: str, media_type: str) -> Path:
        return self.root / sha[:2] / sha[2:4] / f"{sha}{self.EXT.get(media_type, '.bin')}"

    def put(self, data: bytes, media_type: str) -> tuple[str, Path]:
        sha, path, _ = self.put_new(data, media_type)
        return sha, path

    def put_new(self, data: bytes, media_type: str) -> tuple[str, Path, bool]:
        """(sha, path, whether this call wrote the file): the file is durable when this returns."""
        sha = hashlib.sha256(data).hexdigest()
        path = self.path_for(sha, media_type)
        if path.exists() and path.stat().st_size == len(data):
            return sha, path, False
        tmp = None
        try:
            made = [d for d in (path.parent.parent, path.parent) if not d.exists()]
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic: a reader never sees half an image
            tmp = None
            # the rename (and any directory made for it) is on disk only once the directories are synced
            for d in [path.parent, *(x.parent for x in reversed(made))]:
                fsync_dir(d)
        except OSError as exc:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            raise StorageUnavailable(self.root, exc) from exc
        except BaseException:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            raise
        return sha, path, True

    def discard(self, path: Path) -> None:
        """Remove an image this request wrote when its result could not be stored (no orphan files)."""
        try:
            Path(path).unlink(missing_ok=True)
            fsync_dir(Path(path).parent)
        except OSError:
            pass

    def free_bytes(self) -> int:
        import shutil

        return shutil.disk_usage(self.root).free

    def probe(self) -> None:
        """Raise StorageUnavailable unless a file can be written and removed under root now."""
        try:
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".probe-")
            try:
                os.write(fd, b"ok")
            finally:
                os.close(fd)
                os.unlink(tmp)
        except OSError as exc:
            raise StorageUnavailable(self.root, exc) from exc
