import io
import os
import tarfile

import numpy as np
from PIL import Image

from pipeline.config import DecodeSettings, StorageSettings
from pipeline.io.batches import Decoded, Failed, _iter_decoded
from pipeline.io.sources import Listing, iter_unit_items, list_inputs, plan_units
from pipeline.io.storage import Storage
from tests.helpers.relay import without_hanging

STORAGE = Storage(StorageSettings())


def png(value: int = 100) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(out, "PNG")
    return out.getvalue()


def add_member(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE,
               link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data)
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def test_units_cover_every_image_once_and_are_stable():
    images = [f"/data/img{i:03d}.png" for i in range(250)]
    units, buckets = plan_units(Listing(images, [], []), images_per_unit=32)
    assert buckets == 8
    seen = [f for u in units for f in u.files]
    assert sorted(seen) == sorted(images) and len(seen) == len(set(seen))
    # resume with one more image: the stored bucket count keeps the other units' ids and content
    again, _ = plan_units(Listing(images + ["/data/new.png"], [], []), 32, n_buckets=buckets)
    changed = {u.unit_id for u in again} ^ {u.unit_id for u in units}
    assert not changed
    differing = [u for u, v in zip(units, again, strict=True) if u.fingerprint() != v.fingerprint()]
    assert len(differing) == 1 and "/data/new.png" in differing[0].files + again[units.index(differing[0])].files


def test_listing_separates_images_tars_and_others(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.PNG").write_bytes(png())
    (tmp_path / "s.tar").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / ".hidden.png").write_bytes(png())
    listing = list_inputs(STORAGE, str(tmp_path))
    assert [p.rsplit("/", 1)[-1] for p in listing.images] == ["x.PNG"]
    assert len(listing.tars) == 1 and len(listing.skipped) == 1


def test_tar_members_are_streamed_never_extracted(tmp_path):
    path = tmp_path / "shard.tar"
    with tarfile.open(path, "w") as tar:
        for name in ("ok.png", "../../escape.png", "/abs/root.png"):
            add_member(tar, name, png())
        add_member(tar, "link.png", kind=tarfile.SYMTYPE, link="/etc/passwd")
    before = set(tmp_path.parent.rglob("*"))
    units, _ = plan_units(Listing([], [str(path)], []), 10)
    items = list(iter_unit_items(STORAGE, units[0], DecodeSettings()))
    assert [i.member for i in items] == ["ok.png", "../../escape.png", "/abs/root.png", "link.png"]
    assert all(i.error is None and i.data == png() and i.status == "ok" for i in items[:3])
    assert (items[3].status, items[3].data, items[3].error) == ("skipped", None, "skipped: symbolic link in tar")
    assert set(tmp_path.parent.rglob("*")) == before  # nothing written anywhere


def test_tar_entries_get_an_item_each_with_their_position(tmp_path):
    path = tmp_path / "shard.tar"
    with tarfile.open(path, "w") as tar:
        add_member(tar, "dir", kind=tarfile.DIRTYPE)
        add_member(tar, "dir/a.png", png(10))
        add_member(tar, "notes.txt", b"hello")
        add_member(tar, "soft.png", kind=tarfile.SYMTYPE, link="dir/a.png")
        add_member(tar, "hard.png", kind=tarfile.LNKTYPE, link="dir/a.png")
        add_member(tar, "a.png", png(20))
        add_member(tar, "a.png", png(30))  # the same name again: a second input, not a replacement
        add_member(tar, "fifo", kind=tarfile.FIFOTYPE)
    units, _ = plan_units(Listing([], [str(path)], []), 10)
    items = list(iter_unit_items(STORAGE, units[0], DecodeSettings()))
    assert [(i.member, i.member_index, i.status) for i in items] == [
        ("dir/a.png", 1, "ok"), ("notes.txt", 2, "skipped"), ("soft.png", 3, "skipped"), ("hard.png", 4, "skipped"),
        ("a.png", 5, "ok"), ("a.png", 6, "ok"), ("fifo", 7, "skipped")]
    assert [i.error for i in items if i.status == "skipped"] == [
        "skipped: not an image (.txt)", "skipped: symbolic link in tar", "skipped: hard link in tar",
        "skipped: device or FIFO entry in tar"]
    decoded = [d for d in _iter_decoded(STORAGE, units[0], DecodeSettings()) if isinstance(d, Decoded)]
    assert [(d.member, d.member_index, int(d.rgb[0, 0, 0])) for d in decoded] == [
        ("dir/a.png", 1, 10), ("a.png", 5, 20), ("a.png", 6, 30)]


def test_files_that_are_not_inputs_get_skipped_rows_without_being_read(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    (tmp_path / "notes.txt").write_text("hi")
    os.mkfifo(tmp_path / "stream")  # reading it would block: a skipped file is never opened
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / ".DS_Store").write_text("")
    listing = list_inputs(STORAGE, str(tmp_path))
    assert sorted(os.path.basename(p) for p in listing.skipped) == ["notes.txt", "stream"]
    units, n_buckets = plan_units(listing, images_per_unit=10)
    assert n_buckets == 1 and sorted(units[0].files) == sorted(listing.images + listing.skipped)
    items = without_hanging(lambda: list(_iter_decoded(STORAGE, units[0], DecodeSettings())), tmp_path / "stream",
                            seconds=5)
    failed = [f for f in items if isinstance(f, Failed)]
    assert {(os.path.basename(f.source_uri), f.status, f.error) for f in failed} == {
        ("notes.txt", "skipped", "skipped: not an image, tar or video (.txt)"),
        ("stream", "skipped", "skipped: not an image, tar or video (no extension)")}
    # a new skipped file changes its unit's fingerprint, so a resumed run writes its row
    (tmp_path / "more.csv").write_text("x")
    again, _ = plan_units(list_inputs(STORAGE, str(tmp_path)), 10, n_buckets)
    assert again[0].fingerprint() != units[0].fingerprint()


def test_a_fifo_named_like_an_image_is_an_error_row_not_a_hang(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    os.mkfifo(tmp_path / "b.png")
    os.symlink(tmp_path / "b.png", tmp_path / "c.png")
    units, _ = plan_units(list_inputs(STORAGE, str(tmp_path)), 10)
    read = without_hanging(lambda: list(iter_unit_items(STORAGE, units[0], DecodeSettings())), tmp_path / "b.png",
                           seconds=5)
    items = {os.path.basename(i.source_uri): i for i in read}
    assert items["a.png"].status == "ok"
    for name in ("b.png", "c.png"):
        assert items[name].status == "error" and items[name].error.endswith("not a regular file (FIFO)")


def test_truncated_tar_keeps_members_before_the_break(tmp_path):
    path = tmp_path / "shard.tar"
    with tarfile.open(path, "w") as tar:
        for i in range(3):
            info = tarfile.TarInfo(f"{i}.png")
            data = png() + bytes(4096)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    whole = path.read_bytes()
    path.write_bytes(whole[: 512 + len(png()) + 4096 + 512 + 1000])  # cut inside member 2
    units, _ = plan_units(Listing([], [str(path)], []), 10)
    items = list(iter_unit_items(STORAGE, units[0], DecodeSettings()))
    assert items[0].member == "0.png" and items[0].error is None
    assert items[-1].error and "tar shard unreadable" in items[-1].error


def test_oversized_file_is_an_error_item(tmp_path):
    (tmp_path / "big.png").write_bytes(png() + bytes(5000))
    units, _ = plan_units(list_inputs(STORAGE, str(tmp_path)), 10)
    (item,) = iter_unit_items(STORAGE, units[0], DecodeSettings(max_file_bytes=1000))
    assert item.data is None and item.status == "error" and "max_file_bytes=1000" in item.error

