"""Download, verify and safely unpack model weights into the models directory.

Data in, data out: nothing here prints. Progress goes through a :class:`mlc.progress.Progress`
(``NullProgress`` by default, ``RichProgress`` for the CLI); every failure the user can hit is
one ``MlcError`` line, and a failure leaves the previous state intact.

Layout inside the models directory::

    .mlc-state.json          what was installed: checksums, sizes, sources
    .mlc-lock                held while an install runs
    .mlc-downloads/NAME.zip  the download (NAME.zip.part while incomplete)
    .mlc-stage-*/            unpack staging, renamed into place file by file

One job a module, each importing only those below it (the modules are named for their job,
not for the function they export, so ``mlc.fetch.install`` etc. stay the re-exported functions):

    installer.py   install(): skip, fetch (download, archive or generator), unpack, record; lock
    state.py       the state file: read_state, installed_record, is_installed, record_install
    unpacker.py    unpack(): zip members checked first, a staging directory, commit by rename
    downloader.py  download(): resume with Range, retries, verification; mirror_url
    files.py       copy_hashed (the one hash-while-copying loop), sha256_file, check_space
"""

from __future__ import annotations

from mlc.errors import ChecksumError, NoSpaceError
from mlc.fetch.downloader import ENV_MIRROR, DownloadResult, download, mirror_url
from mlc.fetch.files import check_space, sha256_file
from mlc.fetch.installer import DOWNLOADS_DIR, LOCK_FILE, Generator, InstallResult, install
from mlc.fetch.state import STATE_FILE, installed_record, is_installed, read_state, state_path
from mlc.fetch.unpacker import STAGE_PREFIX, unpack
from mlc.progress import NullProgress, Progress, RichProgress

__all__ = [
    "DOWNLOADS_DIR",
    "ENV_MIRROR",
    "LOCK_FILE",
    "STAGE_PREFIX",
    "STATE_FILE",
    "ChecksumError",
    "DownloadResult",
    "Generator",
    "InstallResult",
    "NoSpaceError",
    "NullProgress",
    "Progress",
    "RichProgress",
    "check_space",
    "download",
    "install",
    "installed_record",
    "is_installed",
    "mirror_url",
    "read_state",
    "sha256_file",
    "state_path",
    "unpack",
]
