"""Making a directory read-only in a test, also as root (for whom permission bits do not count)."""

import os
import subprocess
import tempfile


def set_read_only(path, read_only=True):
    """Make directory ``path`` refuse (or accept again) new files: ``chmod`` as a user,
    the immutable attribute (``chattr +i``) as root."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i" if read_only else "-i", path], check=True,
                       capture_output=True)
    else:
        os.chmod(path, 0o555 if read_only else 0o755)


def can_make_read_only():
    """Whether :func:`set_read_only` works here (root needs ``chattr`` and CAP_LINUX_IMMUTABLE)."""
    with tempfile.TemporaryDirectory() as probe:
        try:
            set_read_only(probe)
        except (OSError, subprocess.CalledProcessError):
            return False
        try:
            open(os.path.join(probe, "file"), "w").close()
            return False
        except OSError:
            return True
        finally:
            set_read_only(probe, False)
