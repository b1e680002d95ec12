import io
import tarfile

import numpy as np
from PIL import Image

from pipeline.config import DecodeSettings, StorageSettings
from pipeline.io.sources import Listing, iter_unit_items, list_inputs, plan_units
from pipeline.io.storage import Storage

STORAGE = Storage(StorageSettings())


def png() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(out, "PNG")
    return out.getvalue()


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
            info = tarfile.TarInfo(name)
            data = png()
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.png")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    before = set(tmp_path.parent.rglob("*"))
    units, _ = plan_units(Listing([], [str(path)], []), 10)
    items = list(iter_unit_items(STORAGE, units[0], DecodeSettings()))
    assert [i.member for i in items] == ["ok.png", "../../escape.png", "/abs/root.png"]
    assert all(i.error is None and i.data == png() for i in items)
    assert set(tmp_path.parent.rglob("*")) == before  # nothing written anywhere


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
    assert item.data is None and "max_file_bytes=1000" in item.error

