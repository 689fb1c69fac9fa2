"""vast.ai's instance-to-instance copy, over each simulated instance's own file tree.

``PUT /api/v0/commands/copy_direct/`` (vast-ai/docs ``api-reference/openapi/yaml/copy.yaml``)
answers at once with a message and no job id; the progress shows in the instances' status bar
"~30 seconds delayed", and here in both instances' ``status_msg`` while the copy lasts
(``Timing.copy_delay``). The source may be stopped: the copy reads its disk. vast.ai's CLI
reference warns never to copy to ``/`` or ``/root`` (it breaks the instance's ssh folder); the
simulator refuses them with 400 invalid_args, which is its own choice. The files arrive when
the copy ends, as the source had them when it began; bandwidth is billed unless both instances
are on one machine (vast.ai's data-movement guide).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

COPY_STARTED = (
    "Remote to Remote copy initiated - check instance status bar for progress updates "
    "(~30 seconds delayed)."
)
FORBIDDEN_DESTINATIONS = ("/", "/root")


def normalized(path: str) -> str:
    """Return an absolute path without trailing slash ("/" stays "/")."""
    return posixpath.normpath("/" + path.strip().lstrip("/"))


def forbidden_destination(path: str) -> bool:
    """Tell whether a copy may not write there (``/`` or ``/root``)."""
    return normalized(path) in FORBIDDEN_DESTINATIONS


def select(files: dict[str, str], src_path: str, dst_path: str) -> dict[str, str]:
    """Return the files a copy writes, at their destination paths."""
    src, dst = normalized(src_path), normalized(dst_path)
    if src in files:  # one file, into the destination folder
        return {posixpath.join(dst, posixpath.basename(src)): files[src]}
    prefix = src.rstrip("/") + "/"
    return {
        posixpath.join(dst, path[len(prefix) :]): content
        for path, content in files.items()
        if path.startswith(prefix)
    }


@dataclass
class CopyJob:
    """One copy under way between two instances, on the simulator's clock."""

    src_id: int
    dst_id: int
    src_path: str
    dst_path: str
    started: float
    ends: float
    files: dict[str, str] = field(default_factory=dict)  # at their destination paths
    done: bool = False

    @property
    def size(self) -> int:
        """Return the bytes the copy moves."""
        return sum(len(content.encode()) for content in self.files.values())

    def status_for(self, instance_id: int, now: float) -> str | None:
        """Return what the status bar of one of the two instances says, while it lasts."""
        if now >= self.ends or instance_id not in (self.src_id, self.dst_id):
            return None
        span = self.ends - self.started
        percent = int(100 * (now - self.started) / span) if span > 0 else 100
        if instance_id == self.dst_id:
            where = f"from instance {self.src_id}"
        else:
            where = f"to instance {self.dst_id}"
        return f"Copying {self.src_path} {where} into {self.dst_path}: {percent}%"
