#!/usr/bin/python3
"""A FUSE file system that forgets what was not synced, like a disk losing power.

    lossyfs.py BACKING MOUNTPOINT [--ignore-fsync=PREFIX]

Passes every operation through to the directory BACKING, except file contents: a write
changes an in-memory image of the file, which the mounted file system reads back, and
only fsync/fdatasync writes that image to BACKING (and fsyncs it there). Killing this
process (SIGKILL) is the power cut: every image not yet synced is lost, and BACKING holds
exactly what a disk that honours fsync would still hold. Creating, renaming and removing
files count as durable at once (a kinder model than a real disk, so a loss this finds is
a loss on a real disk too).

--ignore-fsync=PREFIX makes fsync a no-op for files whose name starts with PREFIX (a
database, say, and not the key file beside it): the control that shows a test would see
lost writes.

Used by tests/power_loss.rs; needs Debian's python3-fusepy (libfuse2) and /dev/fuse.
"""
import errno
import os
import sys
import threading

from fusepy import FUSE, FuseOSError, Operations


class Lossy(Operations):
    def __init__(self, root, ignore_fsync):
        self.root = root
        self.ignore_fsync = ignore_fsync  # a file name prefix, or None
        self.images = {}  # path -> bytearray: contents written and not yet synced
        self.mutex = threading.Lock()

    def _full(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def _image(self, path):
        img = self.images.get(path)
        if img is None:
            with open(self._full(path), "rb") as f:
                img = bytearray(f.read())
            self.images[path] = img
        return img

    # Metadata, passed through.
    def getattr(self, path, fh=None):
        st = os.lstat(self._full(path))
        attrs = {k: getattr(st, k) for k in (
            "st_mode", "st_nlink", "st_uid", "st_gid", "st_atime", "st_mtime", "st_ctime")}
        with self.mutex:
            img = self.images.get(path)
            attrs["st_size"] = len(img) if img is not None else st.st_size
        return attrs

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._full(path))

    def mkdir(self, path, mode):
        return os.mkdir(self._full(path), mode)

    def rmdir(self, path):
        return os.rmdir(self._full(path))

    def chmod(self, path, mode):
        return os.chmod(self._full(path), mode)

    def chown(self, path, uid, gid):
        return os.chown(self._full(path), uid, gid)

    def utimens(self, path, times=None):
        return os.utime(self._full(path), times)

    def access(self, path, amode):
        if not os.access(self._full(path), amode):
            raise FuseOSError(errno.EACCES)

    def statfs(self, path):
        st = os.statvfs(self._full(path))
        return {k: getattr(st, k) for k in (
            "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
            "f_flag", "f_frsize", "f_namemax")}

    def unlink(self, path):
        with self.mutex:
            self.images.pop(path, None)
        return os.unlink(self._full(path))

    def rename(self, old, new):
        with self.mutex:
            img = self.images.pop(old, None)
            if img is not None:
                self.images[new] = img
            else:
                self.images.pop(new, None)
        return os.rename(self._full(old), self._full(new))

    def link(self, target, source):
        return os.link(self._full(source), self._full(target))

    def symlink(self, target, source):
        return os.symlink(source, self._full(target))

    def readlink(self, path):
        return os.readlink(self._full(path))

    # Contents: images until synced.
    def create(self, path, mode, fi=None):
        fd = os.open(self._full(path), os.O_WRONLY | os.O_CREAT, mode)
        os.close(fd)
        return 0

    def open(self, path, flags):
        if flags & os.O_TRUNC:
            self.truncate(path, 0)
        return 0

    def read(self, path, size, offset, fh):
        with self.mutex:
            img = self.images.get(path)
            if img is not None:
                return bytes(img[offset:offset + size])
        with open(self._full(path), "rb") as f:
            f.seek(offset)
            return f.read(size)

    def write(self, path, data, offset, fh):
        with self.mutex:
            img = self._image(path)
            end = offset + len(data)
            if len(img) < offset:
                img.extend(b"\0" * (offset - len(img)))
            img[offset:end] = data
            return len(data)

    def truncate(self, path, length, fh=None):
        with self.mutex:
            img = self._image(path)
            if length < len(img):
                del img[length:]
            else:
                img.extend(b"\0" * (length - len(img)))

    def fsync(self, path, datasync, fh):
        if self.ignore_fsync is not None and os.path.basename(path).startswith(self.ignore_fsync):
            return 0
        with self.mutex:
            img = self.images.pop(path, None)
            if img is None:
                return 0
            fd = os.open(self._full(path), os.O_WRONLY)
            try:
                os.ftruncate(fd, len(img))
                os.pwrite(fd, bytes(img), 0)
                os.fsync(fd)
            finally:
                os.close(fd)
        return 0

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        return 0

    def fsyncdir(self, path, datasync, fh):
        return 0


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 2:
        sys.exit(__doc__)
    root, mountpoint = args
    ignore = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--ignore-fsync=")), None)
    FUSE(Lossy(os.path.abspath(root), ignore), mountpoint,
         foreground=True, nothreads=False, allow_other=False, default_permissions=True)


if __name__ == "__main__":
    main()
