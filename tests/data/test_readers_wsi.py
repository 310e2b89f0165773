"""Whole-slide readers agree with tifffile and OpenSlide, decode only the tiles they need, find tissue."""

from __future__ import annotations

import numpy as np
import pytest

from medcl.errors import ReaderError
from medcl.readers import read, read_region, tile_slide, tissue_mask
from medcl.readers.wsi import otsu_threshold, slide_info

# --------------------------------------------------------------------------- whole-slide images


def test_wsi_overview_and_metadata(pyramid_tiff):
    s = read(pyramid_tiff.path)
    assert s.meta["format"] == "wsi" and s.meta["modality"] == "histo"
    assert s.array.shape == (3, 128, 128)
    np.testing.assert_array_equal(s.array, np.moveaxis(pyramid_tiff.levels[2], -1, 0))
    assert s.meta["levels"] == 3
    assert s.meta["dimensions"] == [[512, 512], [256, 256], [128, 128]]
    assert s.meta["downsamples"] == [1.0, 2.0, 4.0]
    assert s.meta["mpp"] == pytest.approx(0.5)
    np.testing.assert_allclose(s.meta["spacing"], [0.002, 0.002])  # 0.5 µm x 4 at level 2, in mm
    s1 = read(pyramid_tiff.path, level=1)
    np.testing.assert_array_equal(s1.array, np.moveaxis(pyramid_tiff.levels[1], -1, 0))
    with pytest.raises(ReaderError, match="max_pixels"):
        read(pyramid_tiff.path, level=0, max_pixels=100_000)


def test_read_region_matches_tifffile_and_openslide(pyramid_tiff, ifd_pyramid_tiff):
    import openslide
    import tifffile

    lvl0 = tifffile.imread(pyramid_tiff.path)
    r = read_region(pyramid_tiff.path, x=100, y=37, level=0, size=(90, 70))
    assert r.array.shape == (3, 70, 90)
    np.testing.assert_array_equal(r.array, np.moveaxis(lvl0[37:107, 100:190], -1, 0))
    r1 = read_region(pyramid_tiff.path, x=200, y=64, level=1, size=50)
    np.testing.assert_array_equal(r1.array, np.moveaxis(pyramid_tiff.levels[1][32:82, 100:150], -1, 0))
    # an independent implementation: OpenSlide on the successive-IFD pyramid
    with openslide.OpenSlide(str(ifd_pyramid_tiff.path)) as osl:
        assert osl.level_count == 3
        ref = np.asarray(osl.read_region((96, 160), 1, (60, 40)))[..., :3]
    ours = read_region(ifd_pyramid_tiff.path, x=96, y=160, level=1, size=(60, 40))
    np.testing.assert_array_equal(ours.array, np.moveaxis(ref, -1, 0))
    ours_os = read_region(ifd_pyramid_tiff.path, x=96, y=160, level=1, size=(60, 40), backend="openslide")
    np.testing.assert_array_equal(ours_os.array, ours.array)
    edge = read_region(pyramid_tiff.path, x=480, y=480, level=0, size=64)  # half outside: white padding
    assert (edge.array[:, 40:, :] == 255).all()
    with pytest.raises(ReaderError, match="outside the slide"):
        read_region(pyramid_tiff.path, x=5000, y=0, level=0, size=64)


def test_read_region_decodes_only_the_tiles_it_touches(pyramid_tiff):
    """Corrupt the bottom-right level-0 tile: a region elsewhere still reads, the whole level fails."""
    import tifffile

    with tifffile.TiffFile(pyramid_tiff.path) as tif:
        page = tif.series[0].levels[0].keyframe
        offset, count = page.dataoffsets[-1], page.databytecounts[-1]
    with open(pyramid_tiff.path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * count)
    r = read_region(pyramid_tiff.path, x=0, y=0, level=0, size=128)
    np.testing.assert_array_equal(r.array, np.moveaxis(pyramid_tiff.levels[0][:128, :128], -1, 0))
    with pytest.raises(ReaderError, match="cannot decode level 0"):
        read(pyramid_tiff.path, level=0)


def test_otsu_matches_skimage():
    from skimage.filters import threshold_otsu

    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(0.1, 0.03, 3000), rng.normal(0.6, 0.1, 1000)])
    assert abs(otsu_threshold(v) - threshold_otsu(v)) < (v.max() - v.min()) / 128


def test_tissue_mask_finds_tissue(pyramid_tiff):
    mask = tissue_mask(pyramid_tiff.path)
    assert mask.shape == (128, 128) and mask.dtype == bool
    truth = np.zeros((128, 128), bool)
    truth[32:96, 16:80] = True  # the rectangle at level 2 (downsample 4)
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.95


def test_tile_slide_keeps_tissue_tiles(pyramid_tiff):
    tiles = tile_slide(pyramid_tiff.path, tile_size=64, level=0, min_tissue=0.5)
    # the 256x256 tissue rectangle (rows 128:384, cols 64:320) is covered by exactly 4x4 tiles
    assert sorted((t["x"], t["y"]) for t in tiles) == sorted(
        (x, y) for x in range(64, 320, 64) for y in range(128, 384, 64))
    assert all(t["level"] == 0 and t["size"] == 64 and t["tissue"] >= 0.5 for t in tiles)
    half = tile_slide(pyramid_tiff.path, tile_size=64, level=0, min_tissue=0.5, stride=32)
    assert len(half) > len(tiles)
    # magnification: 0.5 µm/pixel = 20x; 10x is level 1 exactly, 5x level 2, 8x reads level 1 and resizes
    t10 = tile_slide(pyramid_tiff.path, tile_size=32, magnification=10)
    assert {t["level"] for t in t10} == {1} and {t["size"] for t in t10} == {32}
    assert all(t["x"] % 64 == 0 for t in t10)  # 32 px at downsample 2 = 64 level-0 pixels
    t5 = tile_slide(pyramid_tiff.path, tile_size=16, magnification=5)
    assert {t["level"] for t in t5} == {2}
    t8 = tile_slide(pyramid_tiff.path, tile_size=32, magnification=8)
    assert {t["level"] for t in t8} == {1} and {t["size"] for t in t8} == {40}
    region = read_region(pyramid_tiff.path, t10[0]["x"], t10[0]["y"], t10[0]["level"], t10[0]["size"])
    assert region.array.shape == (3, 32, 32)
    with pytest.raises(ReaderError, match="40x is not available.*20x"):
        tile_slide(pyramid_tiff.path, magnification=40)


def test_svs_objective_power_and_openslide_agreement(svs_slide):
    import openslide

    info = slide_info(svs_slide.path)
    assert info.vendor == "aperio" and info.objective_power == 40 and info.mpp == pytest.approx(0.25)
    assert info.dimensions == [(512, 512), (256, 256), (128, 128)]
    tiles = tile_slide(svs_slide.path, tile_size=64, magnification=20)
    assert tiles and {t["level"] for t in tiles} == {1}
    with openslide.OpenSlide(str(svs_slide.path)) as osl:
        assert osl.properties.get("openslide.vendor") == "aperio"
        ref = np.asarray(osl.read_region((64, 128), 1, (32, 48)))[..., :3]
    ours = read_region(svs_slide.path, 64, 128, 1, (32, 48))
    np.testing.assert_array_equal(ours.array, np.moveaxis(ref, -1, 0))


def test_wsi_without_resolution_and_corrupt(tmp_path):
    import tifffile

    img = np.full((128, 128, 3), 230, np.uint8)
    p = tmp_path / "nores.tif"
    with tifffile.TiffWriter(str(p)) as tif:
        tif.write(img, tile=(64, 64), photometric="rgb", subifds=1)
        tif.write(img[::2, ::2], tile=(64, 64), photometric="rgb", subfiletype=1)
    with pytest.raises(ReaderError, match="neither objective power nor microns per pixel"):
        tile_slide(p, magnification=10)
    assert tile_slide(p, tile_size=32, level=0) == []  # blank glass: no tissue
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"II*\x00" + b"\xff" * 100)
    with pytest.raises(ReaderError, match="junk.svs"):
        read(junk)


def test_a_damaged_slide_tiff_is_a_slide_error_not_an_image_read(tmp_path):
    """Slide detection that cannot open the TIFF says so; the file is never handed to the plain-image reader."""
    import tifffile

    from medcl.errors import ReaderError
    from medcl.readers import detect_format, read

    good = tmp_path / "slide.tif"
    tifffile.imwrite(good, np.zeros((64, 64, 3), np.uint8), tile=(16, 16))
    data = bytearray(good.read_bytes())
    data[4:8] = b"\xff\xff\xff\x7f"  # the first IFD offset points past the end of the file
    bad = tmp_path / "damaged.tif"
    bad.write_bytes(bytes(data))
    with pytest.raises(ReaderError, match="whether it is a slide or an image cannot be told") as info:
        detect_format(bad)
    assert info.value.where == str(bad)
    with pytest.raises(ReaderError, match="whether it is a slide"):
        read(bad)


# --------------------------------------------------------------------------- multi-file slides: members named


def _mirax(tmp_path, n_data=3, bom=True):
    """A MIRAX slide's files: ``s.mrxs``, ``s/Slidedat.ini`` naming ``Index.dat`` and ``Data000i.dat``."""
    (tmp_path / "s.mrxs").write_bytes(b"not an image: the index of a MIRAX slide")
    folder = tmp_path / "s"
    folder.mkdir()
    names = [f"Data{i:04d}.dat" for i in range(n_data)]
    ini = ["[GENERAL]", "SLIDE_VERSION=01.03", "[HIERARCHICAL]", "INDEXFILE=Index.dat", "[DATAFILE]",
           f"FILE_COUNT={n_data}", *(f"FILE_{i}={n}" for i, n in enumerate(names))]
    (folder / "Slidedat.ini").write_text(("\ufeff" if bom else "") + "\r\n".join(ini) + "\r\n", encoding="utf-8")
    for n in ["Index.dat", *names]:
        (folder / n).write_bytes(b"\x01" * 64)
    (folder / "notes.txt").write_text("thumbnail and notes are never read")
    return tmp_path / "s.mrxs", folder


def test_a_mirax_slide_names_every_missing_or_empty_member_and_the_key_that_names_it(tmp_path):
    import openslide

    slide, folder = _mirax(tmp_path)
    (folder / "Data0001.dat").unlink()
    (folder / "Data0002.dat").write_bytes(b"")
    with pytest.raises(ReaderError) as e:
        read(slide)
    msg = str(e.value)
    assert "2 MIRAX slide members cannot be read" in msg
    assert "s/Data0001.dat (missing; named by DATAFILE/FILE_1)" in msg
    assert "s/Data0002.dat (empty (0 bytes); named by DATAFILE/FILE_2)" in msg
    assert "Data0000" not in msg and "Index.dat" not in msg and "notes.txt" not in msg
    assert "copy the whole slide again" in msg
    with pytest.raises(openslide.OpenSlideError):  # the reference library cannot open it either
        openslide.OpenSlide(str(slide))


def test_a_mirax_slide_with_all_members_present_reaches_openslide(tmp_path):
    slide, _ = _mirax(tmp_path, bom=False)
    with pytest.raises(ReaderError) as e:  # members present but not real MIRAX data: OpenSlide's own refusal
        read(slide)
    assert "members cannot" not in str(e.value) and "OpenSlide failed" in str(e.value)


@pytest.mark.parametrize("damage, expected", [
    ("folder", "MIRAX slide without its folder: s/ is missing next to s.mrxs"),
    ("slidedat", "MIRAX slide member s/Slidedat.ini is missing"),
    ("no-datafile", "lacks or garbles 'DATAFILE'"),
    ("count", "lacks or garbles 'FILE_2'"),
])
def test_a_mirax_index_that_cannot_list_its_members_is_named(tmp_path, damage, expected):
    import shutil

    slide, folder = _mirax(tmp_path)
    ini = folder / "Slidedat.ini"
    if damage == "folder":
        shutil.rmtree(folder)
    elif damage == "slidedat":
        ini.unlink()
    elif damage == "no-datafile":
        ini.write_text("[HIERARCHICAL]\nINDEXFILE=Index.dat\n")
    else:
        ini.write_text(ini.read_text(encoding="utf-8-sig").replace("FILE_2=Data0002.dat", ""))
    with pytest.raises(ReaderError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        read(slide)


def test_a_hamamatsu_vms_slide_names_its_missing_image_and_map_files(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8" + b"\0" * 30)
    (tmp_path / "s.vms").write_text("[Virtual Microscope Specimen]\nNoLayers=1\nNoJpegColumns=2\nNoJpegRows=1\n"
                                    "ImageFile=a.jpg\nImageFile(1,0)=b.jpg\nMapFile=s.map\n")
    with pytest.raises(ReaderError) as e:
        read(tmp_path / "s.vms")
    msg = str(e.value)
    assert "2 Hamamatsu slide members cannot be read" in msg
    assert "b.jpg (missing; named by Virtual Microscope Specimen/ImageFile(1,0))" in msg
    assert "s.map (missing; named by Virtual Microscope Specimen/MapFile)" in msg and "a.jpg (" not in msg


# --------------------------------------------------------------------------- slides kept open between tile reads


def test_regions_read_through_a_kept_open_slide_equal_fresh_reads(pyramid_tiff, tmp_path, monkeypatch):
    import shutil
    import threading

    from medcl.readers import wsi_backends

    monkeypatch.setattr(wsi_backends, "_OPEN", wsi_backends.OrderedDict())
    monkeypatch.setattr(wsi_backends, "KEEP_OPEN", 2)
    for x, y, level in ((0, 0, 0), (100, 37, 0), (64, 128, 1), (96, 200, 2)):
        kept = read_region(pyramid_tiff.path, x, y, level, 40, keep_open=True)
        np.testing.assert_array_equal(kept.array, read_region(pyramid_tiff.path, x, y, level, 40).array)
    assert len(wsi_backends._OPEN) == 1  # one slide: opened once
    copies = [shutil.copy(pyramid_tiff.path, tmp_path / f"c{i}.tif") for i in range(3)]
    for c in copies:
        read_region(c, 0, 0, 0, 8, keep_open=True)
    assert [k[2] for k in wsi_backends._OPEN] == [str(c.resolve()) for c in copies[1:]]  # LRU: 2 kept
    other = []  # another thread never gets this thread's handle
    t = threading.Thread(target=lambda: other.append(wsi_backends.kept_open(copies[2])))
    t.start()
    t.join()
    assert other[0] is not wsi_backends.kept_open(copies[2])
    # a slide rewritten in place (new size and time) is opened again: the new pixels, not the old handle's
    import tifffile

    new = np.zeros((128, 128, 3), np.uint8)
    new[:, :, 1] = 200
    tifffile.imwrite(copies[2], new, tile=(64, 64), photometric="rgb")
    np.testing.assert_array_equal(read_region(copies[2], 0, 0, 0, 8, keep_open=True).array[1], 200.0)


def test_a_nominal_magnification_within_three_percent_of_the_scan_is_served_from_level_0(tmp_path):
    import tifffile

    img = np.full((256, 256, 3), 200, np.uint8)
    img[64:192, 64:192] = (150, 60, 140)
    path = tmp_path / "s.tif"
    mpp = 0.5021  # 10 / 0.5021 = 19.92x: "20x" as scanners round it
    tifffile.imwrite(path, img, tile=(64, 64), photometric="rgb", resolution=(1e4 / mpp, 1e4 / mpp),
                     resolutionunit="CENTIMETER")
    tiles = tile_slide(path, tile_size=64, magnification=20)
    assert tiles and {(t["level"], t["size"]) for t in tiles} == {(0, 64)}
    with pytest.raises(ReaderError, match="21x is not available"):
        tile_slide(path, tile_size=64, magnification=21)  # 5 % finer than the scan


def test_tile_cache_keeps_the_most_recently_used_tiles_within_its_budget():
    from medcl.readers.wsi_backends import TileCache

    cache = TileCache(max_bytes=8 * 1000)
    tiles = {i: np.full(1000, i, np.uint8) for i in range(10)}  # 1000 bytes each
    for i in range(8):
        cache.put((0, 0, i), tiles[i])
    assert len(cache) == 8 and cache.bytes == 8000
    assert cache.get((0, 0, 0)) is tiles[0]  # 0 is now the most recently used: 1 goes first
    cache.put((0, 0, 8), tiles[8])
    assert cache.get((0, 0, 1)) is None and cache.get((0, 0, 0)) is tiles[0] and cache.bytes == 8000
    cache.put((0, 0, 9), np.zeros(1001, np.uint8))  # larger than an eighth of the budget: not kept
    assert cache.get((0, 0, 9)) is None and len(cache) == 8
    assert not tiles[0].flags.writeable  # a kept tile cannot be changed under the cache


def test_a_region_read_again_decodes_no_stored_tile_and_a_rewritten_slide_is_read_anew(tmp_path):
    import tifffile

    from medcl.readers.wsi_backends import kept_open

    rng = np.random.default_rng(3)
    img = rng.integers(0, 255, size=(256, 256, 3), dtype=np.uint8)
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, img, tile=(64, 64), photometric="rgb", compression="jpeg")
    ref = tifffile.imread(path)  # tifffile's own decode of every tile
    slide = kept_open(path)
    page = slide.pages[0]
    decoded = []
    decode = page.decode
    page.__dict__["decode"] = lambda data, index, **kw: (decoded.append(index), decode(data, index, **kw))[1]
    first = slide.read_region(0, 50, 40, 100, 30)  # columns 50-149, rows 40-69: tiles (0, 0..2), (1, 0..2)
    assert sorted(decoded) == [0, 1, 2, 4, 5, 6]
    np.testing.assert_array_equal(first, ref[40:70, 50:150])
    again = slide.read_region(0, 60, 60, 90, 20)  # inside the same six tiles
    assert sorted(decoded) == [0, 1, 2, 4, 5, 6]  # nothing decoded again
    np.testing.assert_array_equal(again, ref[60:80, 60:150])
    tifffile.imwrite(path, 255 - img, tile=(64, 64), photometric="rgb", compression="jpeg")
    np.testing.assert_array_equal(read_region(path, 50, 40, 0, (100, 30), keep_open=True).array,
                                  np.moveaxis(tifffile.imread(path)[40:70, 50:150], -1, 0))


def test_a_level_within_three_percent_of_the_wanted_magnification_serves_it(tmp_path):
    import tifffile

    img = np.full((512, 512, 3), 200, np.uint8)
    img[128:384, 128:384] = (150, 60, 140)
    path = tmp_path / "s.tif"
    mpp = 0.5021  # 19.92x: "10x" wants downsample 19.92 / 10 = 1.992, level 1 (2.0) is 0.4 % coarser
    with tifffile.TiffWriter(path) as tif:
        tif.write(img, tile=(64, 64), photometric="rgb", resolution=(1e4 / mpp, 1e4 / mpp),
                  resolutionunit="CENTIMETER")
        tif.write(img[::2, ::2].copy(), tile=(64, 64), photometric="rgb", subfiletype=1)
    tiles = tile_slide(path, tile_size=64, magnification=10)
    # level 1 at round(64 * 1.992 / 2) = 64 pixels, not level 0 at round(64 * 1.992) = 127 pixels resized
    assert tiles and {(t["level"], t["size"]) for t in tiles} == {(1, 64)}
    # 4 % coarser is too far: 10.4x wants downsample 1.915, level 1 is 4.4 % coarser, level 0 serves it
    assert {t["level"] for t in tile_slide(path, tile_size=64, magnification=10.4)} == {0}


def test_a_tile_from_a_slightly_coarser_level_is_enlarged_bilinearly_to_the_tile_size(tmp_path):
    import tifffile

    from medcl.transforms.io import LoadSampled

    # 0.2527 µm/pixel without an AppMag: 39.57x; "10x" wants downsample 3.957, level 1 (4.0) serves it with
    # round(256 * 3.957 / 4) = 253 pixels per tile, enlarged to 256
    ramp = np.tile(np.arange(256, dtype=np.uint8)[None, :, None], (256, 1, 3))  # level 1: value = column
    lvl0 = np.repeat(np.repeat(ramp, 4, axis=0), 4, axis=1)
    path = tmp_path / "s.tif"
    mpp = 0.2527
    with tifffile.TiffWriter(path) as tif:
        tif.write(lvl0, tile=(256, 256), photometric="rgb", resolution=(1e4 / mpp, 1e4 / mpp),
                  resolutionunit="CENTIMETER")
        tif.write(ramp, tile=(128, 128), photometric="rgb", subfiletype=1)
    tiles = tile_slide(path, tile_size=256, magnification=10, min_tissue=0.0)
    assert tiles == [{"x": 0, "y": 0, "level": 1, "size": 253, "tile_size": 256, "tissue": 0.0}]
    out = LoadSampled(keys=("image",))({"image": str(path), "region": [0, 0, 1, 253, 256]})["image"]
    assert tuple(out.shape) == (3, 256, 256)
    # bilinear with half-pixel centres on a linear ramp, by hand: output column j samples the source at
    # u = (j + 0.5) * 253 / 256 - 0.5, clamped to the 253 columns read; the ramp's value there is u
    u = np.clip((np.arange(256) + 0.5) * 253 / 256 - 0.5, 0, 252)
    np.testing.assert_allclose(np.asarray(out)[:, 7, :], np.tile(u, (3, 1)), atol=1e-3)


def test_tiles_of_a_finer_level_start_on_its_pixel_grid_and_read_as_openslide_reads_them(tmp_path):
    import openslide
    import tifffile

    rng = np.random.default_rng(5)
    img = rng.integers(0, 255, size=(512, 512, 3), dtype=np.uint8)
    img[:, :, 1] //= 3  # saturated everywhere: all tissue
    path = tmp_path / "s.tif"
    mpp = 0.4986  # 20.06x: a 10x tile steps 128.4 level-0 pixels, level 1 (downsample 2) serves it
    lv = [img, img[::2, ::2].copy()]
    with tifffile.TiffWriter(path) as tif:
        tif.write(lv[0], tile=(64, 64), photometric="rgb", resolution=(1e4 / mpp, 1e4 / mpp),
                  resolutionunit="CENTIMETER")
        tif.write(lv[1], tile=(64, 64), photometric="rgb", subfiletype=1)
    tiles = tile_slide(path, tile_size=64, magnification=10, min_tissue=0.0)
    assert {t["level"] for t in tiles} == {1} and all(t["x"] % 2 == 0 and t["y"] % 2 == 0 for t in tiles)
    slide = openslide.OpenSlide(str(path))
    for t in tiles[:6]:
        ours = read_region(path, t["x"], t["y"], t["level"], t["size"]).array
        ref = np.asarray(slide.read_region((t["x"], t["y"]), t["level"], (t["size"],) * 2))[..., :3]
        np.testing.assert_array_equal(ours, np.moveaxis(ref, -1, 0))
