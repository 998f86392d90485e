"""Every reference to a document resolves inside the repository.

(a) every ``*.md`` name mentioned in the library, the notebooks (cell sources), the README,
    data/ and docs/ is a file of the repository (relative to the root or to the citing file);
(b) every "<file>.md sec. N" points at a heading numbered N there, and every "lesson N" /
    "pitfall N" of docs/world.md exists; a bare "sec. N" counts as a reference to the document
    last named before it in the same file (or notebook cell), or, inside docs/, to the page
    itself; a quoted section name ('docs/protocol.md, "Metrics"') names a heading;
(c) the design notes that lived outside the repository are no longer cited anywhere;
(d) LICENSE, the SPDX license string in pyproject.toml and CITATION.cff.

Standard library and pytest only (PyYAML is used for CITATION.cff when it is installed).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple


ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", ".ipynb_checkpoints",
             ".pytest_cache", "build", "dist", "runs", "cache", "r1lab.egg-info"}
# The old names are assembled, so that a grep for them finds nothing in this file either.
OLD_NOTES = tuple(n + ".md" for n in ("METHOD", "PROTOCOL", "OFFLINE-WORLD"))
OLD_SHARED = ".." + "/shared"
DAC_ARXIV = "2601.22828"

URL_RE = re.compile(r"(?:https?|ftp)://[^\s)>\]\"'`]+")
MD_RE = re.compile(r"[\w./-]*[\w-]\.md\b")
SPEC = r"(\d+(?:\s*(?:-|–|,|and|to)\s*\d+)*)"
SEC_RE = re.compile(r"\b(?:sec\.|section)\s*" + SPEC, re.I)
ITEM_RE = re.compile(r"\b(lesson|pitfall)s?\s+" + SPEC, re.I)
QUOTE_RE = re.compile(r"^[)\]]*,?\s+\"([^\"]{2,120})\"")
ADJACENT_RE = re.compile(r"^[)\]]*(?:\([^)\s]*\))?[,:;]?\s*$")   # "](x.md) ", ", ", " "
HEADING_RE = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)


# ---------------------------------------------------------------- the repository's files
@lru_cache(maxsize=None)
def repo_files() -> Tuple[Path, ...]:
    """Tracked and untracked-but-not-ignored files (git), or a walk that skips the usual
    build and environment folders when git is unavailable."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, check=True, timeout=60).stdout
        files = [ROOT / p for p in out.decode().split("\0") if p]
        files = [f for f in files if f.is_file()]
        if files:
            return tuple(sorted(files))
    except (OSError, subprocess.SubprocessError):
        pass
    found = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        found += [Path(dirpath) / f for f in filenames]
    return tuple(sorted(found))


def rel(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


@lru_cache(maxsize=None)
def basenames() -> Dict[str, List[Path]]:
    out: Dict[str, List[Path]] = {}
    for f in repo_files():
        out.setdefault(f.name, []).append(f)
    return out


def resolve(name: str, source: Path) -> Optional[Path]:
    """The repository file a mentioned name refers to: relative to the repository root or to
    the citing file; a bare file name may also be any file of that name in the repository."""
    name = name.split("#")[0]
    for base in (ROOT, source.parent):
        cand = (base / name).resolve()
        try:
            cand.relative_to(ROOT)
        except ValueError:
            continue
        if cand.is_file():
            return cand
    if "/" not in name and basenames().get(name):
        return basenames()[name][0]
    return None


# ---------------------------------------------------------------- texts to check
def units() -> Iterator[Tuple[Path, str, str]]:
    """(file, label, text): one unit per .py / .md file and per notebook cell (source only)."""
    files = repo_files()
    for f in files:
        r = rel(f)
        top = r.split("/")[0]
        if f.suffix == ".py" and top == "r1lab":
            yield f, r, f.read_text(encoding="utf-8")
        elif f.suffix == ".md" and (r == "README.md" or top in ("data", "docs")):
            yield f, r, f.read_text(encoding="utf-8")
        elif f.suffix == ".ipynb" and top == "notebooks" and "/" not in r[len("notebooks/"):]:
            nb = json.loads(f.read_text(encoding="utf-8"))
            for i, cell in enumerate(nb.get("cells", [])):
                src = cell.get("source", "")
                yield f, f"{r} cell {i}", "".join(src) if isinstance(src, list) else src


def blank_urls(text: str) -> str:
    """URLs replaced by spaces of the same length (positions stay valid)."""
    return URL_RE.sub(lambda m: " " * len(m.group(0)), text)


def numbers(spec: str) -> List[int]:
    out: List[int] = []
    for part in re.split(r"\s*(?:,|and)\s*", spec):
        m = re.fullmatch(r"(\d+)\s*(?:-|–|to)\s*(\d+)", part)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            out += list(range(a, b + 1)) if a <= b else [a, b]
        elif part.strip().isdigit():
            out.append(int(part))
    return out


@lru_cache(maxsize=None)
def headings(path: Path) -> Tuple[str, ...]:
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)      # no headings in code blocks
    return tuple(m.group(2).strip() for m in HEADING_RE.finditer(text))


def numbered(path: Path, kind: str = "") -> Set[int]:
    """Numbers of the headings "N. title" (kind "") or "Lesson N ..." / "Pitfall N ..."."""
    pat = re.compile(r"(\d+)\." if not kind else kind + r"\s+(\d+)\b", re.I)
    return {int(m.group(1)) for h in headings(path) for m in [pat.match(h)] if m}


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    h = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return h.replace(" ", "-")


def anchors(path: Path) -> Set[str]:
    seen: Dict[str, int] = {}
    out = set()
    for h in headings(path):
        s = slug(h)
        n = seen.get(s, 0)
        out.add(s if n == 0 else f"{s}-{n}")
        seen[s] = n + 1
    return out


def mentions(text: str) -> List[Tuple[int, int, str]]:
    return [(m.start(), m.end(), m.group(0)) for m in MD_RE.finditer(blank_urls(text))]


# ---------------------------------------------------------------- (a) file names
def test_every_md_name_resolves_to_a_repository_file():
    bad = []
    for f, label, text in units():
        for _, _, name in mentions(text):
            if resolve(name, f) is None:
                bad.append(f"{label}: {name}")
    assert not bad, ("these *.md names do not resolve to a file of the repository (relative "
                     "to the root or to the citing file):\n  " + "\n  ".join(sorted(set(bad))))


def test_markdown_links_to_md_files_have_existing_anchors():
    link = re.compile(r"\]\(([^)\s]+?\.md)#([^)\s]+)\)")
    bad = []
    for f, label, text in units():
        for m in link.finditer(text):
            if URL_RE.match(m.group(1)):
                continue
            target = resolve(m.group(1), f)
            if target is not None and m.group(2) not in anchors(target):
                bad.append(f"{label}: {m.group(1)}#{m.group(2)} (anchors: {sorted(anchors(target))})")
    assert not bad, "links to headings that do not exist:\n  " + "\n  ".join(bad)


# ---------------------------------------------------------------- (b) sections, lessons, pitfalls
def section_references() -> Iterator[Tuple[str, Path, str, List[int], str]]:
    """(label, target file, kind, numbers, the text cited) for every reference of (b)."""
    numbered_docs = {(DOCS / "method.md").resolve(), (DOCS / "world.md").resolve()}
    for f, label, text in units():
        clean = blank_urls(text)
        ments = [(s, e, resolve(n, f)) for s, e, n in mentions(clean)]
        own = f.resolve() if f.resolve() in numbered_docs else None
        refs = [(m.start(), m.end(), "", m.group(1)) for m in SEC_RE.finditer(clean)]
        refs += [(m.start(), m.end(), m.group(1).lower(), m.group(2)) for m in ITEM_RE.finditer(clean)]
        for start, end, kind, spec in refs:
            before = [(s, e, t) for s, e, t in ments if e <= start]
            adjacent = bool(before) and ADJACENT_RE.match(clean[before[-1][1]:start]) is not None
            spelled = clean[start:end].lower().startswith("section")
            if adjacent:
                target = before[-1][2]
            elif spelled:
                continue                                # "section 5" of a notebook: its own
            elif re.match(r"\s*(?:below|above)\b", clean[end:end + 8]):
                continue                                # "sec. 9 below": the notebook's own
            elif own is not None:
                target = own
            elif before:
                target = before[-1][2]
            else:
                continue
            if target is None:
                continue                                # an unresolved name fails (a) instead
            if not adjacent and target.resolve() not in numbered_docs:
                continue
            if kind and target.resolve() != (DOCS / "world.md").resolve():
                continue
            yield label, target, kind, numbers(spec), clean[start:end]


def test_section_lesson_and_pitfall_numbers_exist():
    bad = []
    n_checked = 0
    for label, target, kind, nums, cited in section_references():
        have = numbered(target, kind)
        if kind == "" and not have:
            continue                                    # a page without numbered sections
        n_checked += 1
        missing = [n for n in nums if n not in have]
        if missing:
            what = kind or "section"
            bad.append(f"{label}: '{cited}' -> {rel(target)} has no {what} {missing} "
                       f"(it has {sorted(have)})")
    assert not bad, "references to missing numbered parts:\n  " + "\n  ".join(bad)
    assert n_checked > 0, "no section reference was found at all: the scan is broken"


def test_quoted_section_names_exist():
    bad = []
    for f, label, text in units():
        clean = blank_urls(text)
        for s, e, name in mentions(clean):
            m = QUOTE_RE.match(clean[e:e + 200])
            target = resolve(name, f)
            if not m or target is None or target.suffix != ".md":
                continue
            quoted = " ".join(m.group(1).split()).lower()
            titles = [re.sub(r"^\d+\.\s*", "", h).lower() for h in headings(target)]
            if not any(t.startswith(quoted) for t in titles):
                bad.append(f"{label}: {name}, \"{m.group(1)}\" (headings: {titles})")
    assert not bad, "quoted section names that are no heading of the cited page:\n  " + "\n  ".join(bad)


def test_docs_keep_their_stable_numbers():
    assert numbered(DOCS / "method.md") >= set(range(1, 13))
    assert numbered(DOCS / "world.md") >= set(range(1, 10))
    assert numbered(DOCS / "world.md", "lesson") >= set(range(1, 6))
    assert numbered(DOCS / "world.md", "pitfall") >= set(range(1, 9))
    assert "metrics" in [h.lower() for h in headings(DOCS / "protocol.md")]


def test_reference_list_names_the_papers():
    text = (DOCS / "references.md").read_text(encoding="utf-8")
    for arxiv in (DAC_ARXIV, "2103.00020", "2106.09685", "2303.06628", "2403.11549",
                  "2310.14152", "2406.18868", "2412.01004"):
        assert f"arxiv.org/abs/{arxiv}" in text, arxiv
    assert "github.com/mlfoundations/open_clip" in text


# ---------------------------------------------------------------- (c) no notes from outside
def test_no_reference_to_notes_outside_the_repository():
    me = Path(__file__).resolve()
    bad = []
    for f in repo_files():
        if f.resolve() == me or rel(f).startswith("docs/"):
            continue
        if f.suffix not in (".py", ".ipynb", ".md", ".txt", ".toml", ".cfg", ".yml", ".yaml",
                            ".sh", ".cff", ".json", ".rst", ".ini") and f.name not in ("run", "Makefile"):
            continue
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for needle in OLD_NOTES + (OLD_SHARED,):
            n = text.count(needle)
            if n:
                bad.append(f"{rel(f)}: {needle} x{n}")
    assert not bad, ("references to notes that are not in the repository (use docs/method.md, "
                     "docs/protocol.md, docs/world.md):\n  " + "\n  ".join(bad))


# ---------------------------------------------------------------- (d) license and citation
def test_license_file_and_spdx_string():
    import tomllib
    lic = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert lic.startswith("MIT License") and "The r1lab authors" in lic
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "MIT", "use the SPDX string: license = \"MIT\""
    assert project.get("license-files", ["LICENSE"]) == ["LICENSE"]


def _strings(obj) -> Iterator[str]:
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    else:
        yield str(obj)


def test_citation_cff_parses_and_cites_dac():
    text = (ROOT / "CITATION.cff").read_text(encoding="utf-8")
    try:
        import yaml
    except ImportError:                                  # a minimal check without PyYAML
        assert re.search(r"^cff-version: 1\.2\.0\s*$", text, re.M)
        assert re.search(r"^title: .*r1lab", text, re.M)
        assert re.search(r"^preferred-citation:\s*$", text, re.M)
        assert DAC_ARXIV in text
        return
    cff = yaml.safe_load(text)
    assert str(cff["cff-version"]) == "1.2.0"
    assert "r1lab" in cff["title"] and str(cff["version"]) == "0.1.0" and cff["license"] == "MIT"
    assert cff["authors"] and all("name" in a or "family-names" in a for a in cff["authors"])
    cited = cff.get("preferred-citation") or {}
    refs = [cited] + list(cff.get("references", []))
    assert any(DAC_ARXIV in " ".join(_strings(r)) for r in refs), "the DAC paper is not cited"
    assert any("Fa" == a.get("family-names") for r in refs for a in r.get("authors", []))
