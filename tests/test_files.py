"""Result files are written whole or not at all; a failed write is a named error and the earlier file stays."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lusfeat.errors import LusfeatError
from lusfeat.files import make_folder, replace_atomically, write_csv, write_failure, write_json

UNDER_A_FILE_SIZE_LIMIT = """
import resource, sys
import pandas as pd
from lusfeat.errors import LusfeatError
from lusfeat.files import write_csv
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # what ulimit -f 4 sets
try:
    write_csv(pd.DataFrame({"x": range(100_000)}), sys.argv[1])
except LusfeatError as error:
    print(error)
"""


def test_a_write_over_the_file_size_limit_keeps_the_earlier_file(tmp_path):
    path = write_csv(pd.DataFrame({"x": [1, 2]}), tmp_path / "table.csv")
    before = path.read_bytes()
    out = subprocess.run([sys.executable, "-c", UNDER_A_FILE_SIZE_LIMIT, str(path)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == (f"could not write {path}: File too large (EFBIG); raise the file-size limit (ulimit -f) "
                                  "or write to a file system that takes larger files, then run the command again (the "
                                  "earlier file is kept)")
    assert path.read_bytes() == before and sorted(tmp_path.iterdir()) == [path]  # no temporary file left


def _immutable(folder: Path) -> bool:
    """Make ``folder`` immutable (chattr +i: no file made, renamed or removed in it, even by root); False if not possible."""
    try:
        return subprocess.run(["chattr", "+i", str(folder)], capture_output=True, timeout=30).returncode == 0
    except OSError:
        return False


def test_a_folder_that_became_read_only_is_named_and_its_file_kept(tmp_path):
    import os

    folder = tmp_path / "run"
    path = write_json({"a": 1}, make_folder(folder) / "metrics.json")
    if os.geteuid() == 0:
        if not _immutable(folder):
            pytest.skip("root ignores permission bits and chattr +i is not available here")
    else:
        folder.chmod(0o555)
    try:
        with pytest.raises(LusfeatError, match=r"could not write .*metrics\.json: (Operation not permitted \(EPERM\)|"
                           r"Permission denied \(EACCES\)); make the folder writable.* \(the earlier file is kept\)"):
            write_json({"a": 2}, path)
        with pytest.raises(LusfeatError, match=r"could not write .*run/new: "):
            make_folder(folder / "new")
    finally:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True) if os.geteuid() == 0 else folder.chmod(0o755)
    assert path.read_text() == '{\n  "a": 1\n}\n'


def test_a_failure_that_is_no_os_error_is_not_dressed_up_as_one(tmp_path):
    def broken(target: Path) -> None:
        target.write_text("half")
        raise ValueError("a bug, not a disk")

    with pytest.raises(ValueError, match="a bug"):
        replace_atomically(tmp_path / "x.txt", broken)
    assert list(tmp_path.iterdir()) == []


def test_hdf5_errors_carry_the_os_cause():
    error = RuntimeError("Can't write data (file write failed: time = Mon Dec  7 10:24:02 2026, filename = 'f.h5', "
                         "file descriptor = 3, errno = 5, error message = 'Input/output error', buf = 0x1)")
    assert str(write_failure(error, "f.h5")) == ("could not write f.h5: Input/output error (EIO); check the disk (the "
                                                 "kernel log says more: dmesg) and its free space, then run the command "
                                                 "again")
