"""Multi-file slide formats: every member file a slide's index names is present and readable.

A MIRAX slide (``.mrxs``, 3DHISTECH) is an index file next to a folder of the same name holding
``Slidedat.ini``, an index file and numbered data files; a Hamamatsu VMS/VMU slide (``.vms``/``.vmu``) is
an INI file naming JPEG/NGR image files, a map file and an optimisation file beside it (format notes:
https://openslide.org/formats/mirax/ and /formats/hamamatsu/). OpenSlide, given such a slide with a member
missing or cut short, fails with one error about whichever member it met first, or opens the slide and
fails later on a tile read. :func:`check_slide_members` reads the index first and names *every* member that
is missing, empty or unreadable, with the key of the index that names it.

The rule for what a slide folder may hold besides its members: anything. Only the files the index names are
checked; other files in the folder (thumbnails, ``.txt`` notes, vendor ``.xml``/``.json`` exports) are never
read, so they can neither break nor silently feed the slide.
"""

from __future__ import annotations

import configparser
from pathlib import Path

from medcl.errors import ReaderError

#: The fix of every error about a missing or broken member.
FIX_MEMBERS = ("copy the whole slide again: a {kind} slide is the index file and {where}, and every file "
               "the index names must be copied with it")

MULTI_FILE_SUFFIXES = (".mrxs", ".vms", ".vmu")


def _read_ini(path: Path, index: Path) -> configparser.ConfigParser:
    """Parse an INI-style slide index (GKeyFile syntax: ``[group]``, ``key=value``; a UTF-8 BOM allowed)."""
    ini = configparser.ConfigParser(interpolation=None, strict=False, delimiters=("=",),
                                    comment_prefixes=("#", ";"))
    ini.optionxform = str  # keys are case-sensitive (FILE_0, ImageFile)
    try:
        ini.read_string(index.read_text(encoding="utf-8-sig", errors="strict"))
    except (OSError, UnicodeDecodeError, configparser.Error) as e:
        raise ReaderError(f"slide index {index.name} cannot be read as an INI file: {type(e).__name__}: {e}",
                          where=str(index), fix=FIX_MEMBERS.format(kind=path.suffix, where="its folder")) from e
    return ini


def _mrxs_members(path: Path) -> tuple[list[tuple[str, Path]], str]:
    """``([(index key, member path)], where)`` of a MIRAX slide, from ``<name>/Slidedat.ini``."""
    folder = path.with_suffix("")
    where = f"the folder {folder.name}/ next to it"
    fix = FIX_MEMBERS.format(kind="MIRAX", where=where)
    if not folder.is_dir():
        raise ReaderError(f"MIRAX slide without its folder: {folder.name}/ is missing next to {path.name} (the "
                          ".mrxs file is only an index; the pixels are in that folder)", where=str(path), fix=fix)
    slidedat = folder / "Slidedat.ini"
    if not slidedat.is_file():
        raise ReaderError(f"MIRAX slide member {folder.name}/Slidedat.ini is missing", where=str(slidedat), fix=fix)
    ini = _read_ini(path, slidedat)
    members: list[tuple[str, Path]] = []
    try:
        members.append(("HIERARCHICAL/INDEXFILE", folder / ini["HIERARCHICAL"]["INDEXFILE"]))
        count = int(ini["DATAFILE"]["FILE_COUNT"])
        for i in range(count):
            members.append((f"DATAFILE/FILE_{i}", folder / ini["DATAFILE"][f"FILE_{i}"]))
    except (KeyError, ValueError) as e:
        raise ReaderError(f"MIRAX slide member {folder.name}/Slidedat.ini lacks or garbles {e} (the index must "
                          "name [HIERARCHICAL] INDEXFILE and [DATAFILE] FILE_COUNT, FILE_0...)",
                          where=str(slidedat), fix=fix) from e
    return members, where


def _vms_members(path: Path) -> tuple[list[tuple[str, Path]], str]:
    """``([(index key, member path)], where)`` of a Hamamatsu VMS/VMU slide."""
    where = "the image, map and optimisation files beside it"
    ini = _read_ini(path, path)
    group = next((g for g in ("Virtual Microscope Specimen", "Uncompressed Virtual Microscope Specimen")
                  if ini.has_section(g)), None)
    if group is None:
        raise ReaderError(f"{path.name} is not a Hamamatsu slide index: no [Virtual Microscope Specimen] group",
                          where=str(path), fix=FIX_MEMBERS.format(kind="Hamamatsu", where=where))
    members = [(f"{group}/{key}", path.parent / value.strip()) for key, value in ini[group].items()
               if (key.startswith("ImageFile") or key in ("MapFile", "OptimisationFile", "MacroImage"))
               and value.strip()]
    if not any(key.split("/")[1].startswith("ImageFile") for key, _ in members):
        raise ReaderError(f"{path.name} names no ImageFile", where=str(path),
                          fix=FIX_MEMBERS.format(kind="Hamamatsu", where=where))
    return members, where


def _member_problem(member: Path) -> str | None:
    """Why a member cannot be read, or ``None``."""
    if not member.exists():
        return "missing"
    if not member.is_file():
        return "not a file"
    size = member.stat().st_size
    if size == 0:
        return "empty (0 bytes)"
    try:
        with member.open("rb") as f:
            f.read(1)
    except OSError as e:
        return f"unreadable ({e.strerror or type(e).__name__})"
    return None


def check_slide_members(path: Path) -> None:
    """Check every member of a multi-file slide (MIRAX ``.mrxs``, Hamamatsu ``.vms``/``.vmu``); others pass.

    Raises:
        ReaderError: the index cannot be read, or members are missing, empty or unreadable — all of them
            named in one message, each with the index key that names it.
    """
    suffix = path.suffix.lower()
    if suffix not in MULTI_FILE_SUFFIXES:
        return
    kind = "MIRAX" if suffix == ".mrxs" else "Hamamatsu"
    members, where = _mrxs_members(path) if suffix == ".mrxs" else _vms_members(path)
    broken = [(key, member, why) for key, member in members if (why := _member_problem(member)) is not None]
    if not broken:
        return
    shown = "; ".join(f"{m.relative_to(path.parent)} ({why}; named by {key})" for key, m, why in broken[:8])
    more = f"; and {len(broken) - 8} more" if len(broken) > 8 else ""
    noun = "member cannot" if len(broken) == 1 else "members cannot"
    raise ReaderError(f"{len(broken)} {kind} slide {noun} be read: {shown}{more}", where=str(path),
                      fix=FIX_MEMBERS.format(kind=kind, where=where))
