"""The .beton writer/reader against FFCV's own reader and loader."""

import io
import pathlib

import numpy as np
import pytest
from PIL import Image

from alexkit.pipeline import beton
from alexkit.pipeline.beton import MODE_JPG, MODE_RAW, BetonReader, BetonWriter


def _image(i: int, side: int = 24) -> np.ndarray:
    """A flat image whose colour encodes its index (survives JPEG within a few levels)."""
    return np.full((side, side, 3), (10 * i % 250, 255 - 10 * i % 250, 128), np.uint8)


def _jpeg(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _write(path, n, capacity=None):
    w = BetonWriter(path, capacity or n)
    for i in range(n):
        a = _image(i)
        if i % 2:
            w.add(a, i % 5, mode=MODE_RAW, width=24, height=24)
        else:
            w.add(_jpeg(a), i % 5, mode=MODE_JPG, width=24, height=24)
    return w


def test_metadata_layout_matches_ffcv():
    from ffcv.fields import IntField, RGBImageField
    from ffcv.types import HeaderType, get_metadata_type

    theirs = get_metadata_type([RGBImageField(), IntField()])
    assert theirs.itemsize == beton.METADATA.itemsize
    assert [f[1] for f in theirs.fields.values()] == [f[1] for f in beton.METADATA.fields.values()]
    assert HeaderType.itemsize == beton.HEADER.itemsize


def test_round_trip_with_fewer_samples_than_capacity(tmp_path):
    path = tmp_path / "s.beton"
    w = _write(path, 7, capacity=10)
    assert not path.exists(), "the final name appears only when complete"
    assert w.close() == 7
    assert path.exists() and not w.tmp_path.exists()
    r = BetonReader(path)
    assert len(r) == 7
    assert r.labels.tolist() == [i % 5 for i in range(7)]
    assert r.modes.tolist() == [0, 1, 0, 1, 0, 1, 0]
    for i in range(7):
        diff = np.abs(r.pixels(i).astype(int) - _image(i)).max()
        assert diff <= (0 if i % 2 else 3), (i, diff)  # raw is exact, q95 JPEG of a flat image within 3


def test_plain_ffcv_reader_and_loader_read_it(tmp_path):
    from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.reader import Reader

    path = tmp_path / "s.beton"
    _write(path, 9).close()
    reader = Reader(str(path))
    assert reader.num_samples == 9
    loader = Loader(str(path), batch_size=4, num_workers=1, order=OrderOption.SEQUENTIAL, drop_last=False,
                    pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
    seen = []
    for images, labels in loader:
        for img, lab in zip(images, labels.ravel()):
            i = len(seen)
            assert lab == i % 5
            assert np.abs(img.astype(int) - _image(i)).max() <= 3
            seen.append(i)
    assert seen == list(range(9))


def test_samples_never_straddle_pages(tmp_path, monkeypatch):
    monkeypatch.setattr(beton, "PAGE_SIZE", 4096)
    path = tmp_path / "p.beton"
    w = BetonWriter(path, 6)
    for i in range(6):  # 1,728 bytes each: two per 4 KiB page, the third starts a new page
        w.add(_image(i), i, mode=MODE_RAW, width=24, height=24)
    w.close()
    r = BetonReader(path)
    starts = r.ptr - (r.ptr.min() // 4096) * 4096
    assert all((s % 4096) + n <= 4096 for s, n in zip(starts, r.size))
    assert all((r.pixels(i) == _image(i)).all() for i in range(6))


def test_a_sample_one_byte_past_the_page_starts_the_next_page(tmp_path, monkeypatch):
    monkeypatch.setattr(beton, "PAGE_SIZE", 4096)
    w = BetonWriter(tmp_path / "p.beton", 3)
    w.add(np.zeros(4096 - 1000, np.uint8), 0, mode=MODE_RAW, width=1, height=1)  # 1,000 bytes of the page left
    w.add(np.zeros(1001, np.uint8), 1, mode=MODE_RAW, width=1, height=1)
    w.add(np.zeros(1000, np.uint8), 2, mode=MODE_RAW, width=1, height=1)  # fits the rest of that page
    w.close()
    r = BetonReader(tmp_path / "p.beton")
    pages = [(p // 4096, (p + n - 1) // 4096) for p, n in zip(r.ptr, r.size)]
    assert all(first == last for first, last in pages) and pages[1][0] == pages[0][0] + 1 == pages[2][0]


def test_a_sample_larger_than_a_page_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(beton, "PAGE_SIZE", 4096)
    w = BetonWriter(tmp_path / "p.beton", 1)
    with pytest.raises(ValueError, match="page"):
        w.add(np.zeros(4097, np.uint8), 0, mode=MODE_RAW, width=1, height=1)
    w.abort()


def test_the_allocation_table_is_ffcvs_and_the_reader_follows_its_sample_ids(tmp_path):
    """The table starts on a page boundary and names each row's sample; FFCV's own writer leaves
    the rows out of sample order, so the reader must go by sample_id, not by row."""
    path = tmp_path / "p.beton"
    w = BetonWriter(path, 4)
    for i in range(4):
        w.add(_image(i), i, mode=MODE_RAW, width=24, height=24)
    w.close()
    header = np.fromfile(path, beton.HEADER, 1)[0]
    table = int(header["alloc_table_ptr"])
    assert table % beton.PAGE_SIZE == 0
    rows = np.fromfile(path, beton.ALLOC, 4, offset=table)
    assert rows["sample_id"].tolist() == [0, 1, 2, 3]
    with open(path, "r+b") as f:
        f.seek(table)
        f.write(rows[::-1].tobytes())
    r = BetonReader(path)
    assert all((r.pixels(i) == _image(i)).all() for i in range(4))


def test_abort_leaves_nothing(tmp_path):
    path = tmp_path / "a.beton"
    w = _write(path, 3)
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_too_many_samples_is_an_error(tmp_path):
    w = _write(tmp_path / "x.beton", 2)
    with pytest.raises(ValueError):
        w.add(_image(0), 0, mode=MODE_RAW, width=24, height=24)
    w.abort()


def test_a_split_with_no_samples_is_a_readable_file(tmp_path):
    """Every source of a split skipped: the file is still complete, with no samples."""
    path = tmp_path / "empty.beton"
    assert BetonWriter(path, 3).close() == 0
    assert len(BetonReader(path)) == 0


@pytest.mark.parametrize("keep", [0, 10, 3000, -1000])
def test_broken_files_are_one_line_errors_naming_the_file(tmp_path, keep):
    """Empty, cut inside the header, inside the fields, or with the end (the allocation table) cut off."""
    from alexkit.errors import AlexkitError

    good = tmp_path / "good.beton"
    _write(good, 4).close()
    data = good.read_bytes()
    bad = tmp_path / "bad.beton"
    bad.write_bytes(data[:keep])
    with pytest.raises(AlexkitError, match=r"bad\.beton is not a readable \.beton \(.*\); rewrite the store with ") as info:
        BetonReader(bad)
    assert str(info.value).endswith(f"`alexkit prepare SRC --out {tmp_path} --force`")  # the store: the file's folder


def test_write_atomic_leaves_the_old_file_and_no_partial_when_writing_fails(tmp_path):
    from alexkit.outputs import write_atomic

    target = tmp_path / "x.json"
    write_atomic(target, "old")

    def fails(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full") as info:
        write_atomic(target, fails)
    assert info.value.filename == str(target)  # the path asked for, not the temporary
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]

    def reads_a_missing_file(f):
        f.write((tmp_path / "missing").read_bytes())

    with pytest.raises(FileNotFoundError) as info:
        write_atomic(target, reads_a_missing_file)
    assert info.value.filename == str(tmp_path / "missing")  # an error about another file keeps its name


def test_outputs_the_user_names_are_written_through_links_and_into_pipes_and_streams(tmp_path):
    """write_output (--json, --predictions, plot's --out): a link's target is the file replaced (the
    link stays; a link to nothing makes its target); a pipe or /dev/null is written to as it is
    (replaced by a file, it would be destroyed: as root, /dev/null itself). check_output lets both
    through and refuses a link loop. write_atomic, for a run's and a store's own files, replaces a
    link: a run made of links to another run's files must not rewrite that run."""
    import os
    import stat
    import threading

    from alexkit.errors import AlexkitError
    from alexkit.outputs import check_output, write_atomic, write_output

    target, link = tmp_path / "target.json", tmp_path / "link.json"
    target.write_text("old")
    link.symlink_to(target)
    check_output(link, "--json")
    write_output(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    (tmp_path / "dangling.json").symlink_to(tmp_path / "made.json")
    write_output(tmp_path / "dangling.json", b"made")
    assert (tmp_path / "dangling.json").is_symlink() and (tmp_path / "made.json").read_bytes() == b"made"
    write_atomic(link, "a run's own file")
    assert not link.is_symlink() and target.read_text() == "new"
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    with pytest.raises(AlexkitError, match=r"^--out .*loop.png is a link that leads round in a loop; remove it"):
        check_output(tmp_path / "loop.png", "--out")

    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    check_output(fifo, "--predictions")
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    write_output(fifo, "a,b\n")
    reader.join(timeout=30)
    assert received == ["a,b\n"] and stat.S_ISFIFO(fifo.stat().st_mode)
    write_output(pathlib.Path(os.devnull), lambda f: f.write(b"nothing"))
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_dev_stdout_is_written_into_the_stream_keeping_what_the_shell_appended_to(tmp_path):
    """`eval --json /dev/stdout >> all.log`: /dev/stdout leads to all.log itself, which a rename would
    replace and a reopening would truncate; the JSON goes after what was printed and what was there."""
    import subprocess
    import sys

    log = tmp_path / "all.log"
    log.write_text("kept\n")
    code = """if True:
        from alexkit.outputs import check_output, write_output
        check_output("/dev/stdout", "--json")
        print("figures")
        write_output("/dev/stdout", '{"n": 1}\\n')
    """
    with open(log, "ab") as out:
        r = subprocess.run([sys.executable, "-c", code], stdout=out, stderr=subprocess.PIPE, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert log.read_text() == 'kept\nfigures\n{"n": 1}\n'


def test_a_full_disk_under_torch_save_is_an_oserror_naming_the_file(tmp_path):
    """torch.save turns a failed write into RuntimeError('unexpected pos ...'); write_atomic hands on
    the OSError itself, which the CLI prints as one line naming the file. A file size limit stands
    in for the full disk (in a child process: the limit is per process)."""
    import subprocess
    import sys

    code = """if True:
        import resource, signal, sys, torch
        from alexkit.outputs import write_atomic
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))
        try:
            write_atomic(sys.argv[1], lambda f: torch.save({"w": torch.zeros(1_000_000)}, f))
        except OSError as exc:
            print(type(exc).__name__, exc.strerror, exc.filename)
    """
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "last.pt")], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == f"OSError File too large {tmp_path / 'last.pt'}", r.stdout + r.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not pathlib.Path("/proc/self/fd").is_dir(), reason="tells a folder's descriptor by /proc")
def test_write_atomic_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    import os

    from alexkit.outputs import write_atomic

    events, real_fsync, real_replace = [], os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.path.isdir(f"/proc/self/fd/{fd}"))) or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", None)) or real_replace(a, b))
    write_atomic(tmp_path / "x.json", "data")
    assert events == [("fsync", False), ("replace", None), ("fsync", True)]  # file, rename, folder


def test_write_atomic_from_two_processes_at_once_leaves_one_whole_version(tmp_path):
    """Two writers of one file (e.g. two ranks saving the same picture) each rename their own
    temporary: the file ends as one writer's bytes, never a mix, and neither fails."""
    import multiprocessing

    target = tmp_path / "x.bin"
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_write_many, args=(target, byte, start)) for byte in (b"A", b"B")]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [proc.exitcode for proc in procs] == [0, 0]
    data = target.read_bytes()
    assert len(data) == 1_000_000 and data in (b"A" * 1_000_000, b"B" * 1_000_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]


def test_write_atomic_removes_the_temporaries_of_killed_writers_of_this_host(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from alexkit.outputs import write_atomic

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host, dead, alive = socket.gethostname(), int(gone.stdout), os.getppid()
    left = {name: tmp_path / f".x.json.{name}.partial" for name in
            (f"{host}-{dead}-0a0b0c0d", f"{host}-{alive}-0a0b0c0d", f"elsewhere-{dead}-0a0b0c0d")}  # fmt: skip
    for tmp in left.values():
        tmp.write_text("half")
        os.utime(tmp, (tmp.stat().st_atime, tmp.stat().st_mtime - 120))  # untouched for two minutes
    fresh = tmp_path / f".x.json.{host}-{dead}-0e0e0e0e.partial"  # written to just now: perhaps a live writer
    fresh.write_text("half")
    left["fresh"] = fresh
    write_atomic(tmp_path / "x.json", "whole")
    assert (tmp_path / "x.json").read_text() == "whole"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "x.json") == sorted(
        left[k].name for k in (f"{host}-{alive}-0a0b0c0d", f"elsewhere-{dead}-0a0b0c0d", "fresh"))  # alive, not checkable, recent


def _write_many(target, byte: bytes, start) -> None:
    from alexkit.outputs import write_atomic

    def slowly(f):  # in pieces, as torch.save and PNG writers do, so the two writers overlap
        for _ in range(100):
            f.write(byte * 10_000)
            f.flush()

    start.wait()
    for _ in range(30):
        write_atomic(target, slowly)


def test_abort_deletes_the_file_even_when_closing_fails(tmp_path):
    """On a full disk closing flushes the last buffer and fails again; the file must still go."""
    w = _write(tmp_path / "a.beton", 2)
    real = w.file

    class Full:
        def close(self):
            real.close()
            raise OSError(28, "No space left on device")

    w.file = Full()
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_write_atomic_names_the_file_asked_for_when_the_rename_fails(tmp_path):
    from alexkit.outputs import write_atomic

    (tmp_path / "x.json").mkdir()  # a folder in the way: the rename fails, and the error names x.json
    with pytest.raises(OSError) as info:
        write_atomic(tmp_path / "x.json", "data")
    assert info.value.filename == str(tmp_path / "x.json") and [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_write_atomic_names_the_file_asked_for_on_a_read_only_file_system(tmp_path):
    """There unlink of the temporary that could not be made fails too (EROFS): that second error,
    naming the temporary, must not take the place of the first."""
    import shutil
    import subprocess

    from alexkit.outputs import write_atomic

    ro = tmp_path / "ro"
    ro.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(ro)]
    if shutil.which("mount") is None or subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("needs a read-only file system: mounting one is not allowed here")
    try:
        with pytest.raises(OSError, match="Read-only file system") as info:
            write_atomic(ro / "x.png", b"data")
        assert info.value.filename == str(ro / "x.png")
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_the_fix_for_a_damaged_store_is_the_line_that_writes_it_again(tmp_path):
    """From manifest.json: the source, and the settings that are not prepare's defaults (a raw store has
    no quality); SRC where the manifest cannot be read. Paths are quoted for the shell."""
    import json

    from alexkit.pipeline.store import rewrite

    store = tmp_path / "my store"
    store.mkdir()
    manifest = {"source": {"path": "/data/image net"}, "settings": {"size": 256, "format": "raw", "quality": None}}
    (store / "manifest.json").write_text(json.dumps(manifest))
    assert rewrite(store) == f"rewrite the store with `alexkit prepare '/data/image net' --out '{store}' --format raw --force`"
    manifest["settings"] = {"size": 128, "format": "jpg", "quality": 75}
    (store / "manifest.json").write_text(json.dumps(manifest))
    assert rewrite(store).endswith(" --size 128 --quality 75 --force`")
    (store / "manifest.json").write_text("{")
    assert rewrite(store) == f"rewrite the store with `alexkit prepare SRC --out '{store}' --force`"
