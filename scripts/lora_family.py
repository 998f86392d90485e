"""DAC among the LoRA family: every step of the study of notebook 07, in order, from nothing to
the tables in the README (r1lab/analysis/lora_family.py says what each step does and why).

    python scripts/lora_family.py all           # tune, compare, collisions, cost, readme
    python scripts/lora_family.py tune          # the validation runs that choose each setting
    python scripts/lora_family.py compare       # both forms, 7 methods x 3 seeds (+ collisions)
    python scripts/lora_family.py cost          # benchmarks/lora_family_cost.py
    python scripts/lora_family.py readme        # README's tables from the committed folders
    python scripts/lora_family.py readme --check   # exit 1 when README disagrees with them

Every step skips what is already finished (the CLI resumes run folders); on 2 CPU cores the
whole study takes about 1.5 hours, the tables alone a few seconds.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from r1lab.analysis import lora_family as lf  # noqa: E402

README = ROOT / "README.md"
BEGIN, END = "<!-- lora-family:begin (scripts/lora_family.py readme) -->", "<!-- lora-family:end -->"


def _r1lab(*args: str) -> None:
    cmd = [sys.executable, "-m", "r1lab", *args]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"))


def tune() -> None:
    for method, (field, values) in lf.TUNING.items():
        _r1lab("sweep", "--methods", method, "--seeds", "0", "--set", f"iterations={lf.ITERATIONS}",
               "--set", f"{field}={','.join(f'{v:g}' for v in values)}", "--eval-split", "val",
               "--cluster", "debug", "--quiet", "--out", str(lf.results_dir() / "tune" / method))
    print("chosen:", lf.settings(lf.results_dir() / "tune"))


def compare_command(form: str) -> list:
    """The CLI arguments of one form's comparison (the chosen settings read from tune/)."""
    sets = [a for f, v in lf.settings(lf.results_dir() / "tune").items() for a in ("--set", f"{f}={v}")]
    space = ["--label-space", "union"] if form == "xtail" else []
    return ["compare", "--methods", *lf.METHODS, "--seeds", *map(str, lf.SEEDS),
            "--set", f"iterations={lf.ITERATIONS}", *sets, *space, "--quiet",
            "--out", str(lf.results_dir() / form)]


def compare() -> None:
    for form in lf.FORMS:
        folder = lf.results_dir() / form
        if not lf.complete(folder) or not (folder / "collisions.json").exists():
            _r1lab(*compare_command(form))
            lf.write_collisions(folder)           # from the last checkpoints, then drop them
        for ck in folder.glob("*/checkpoints"):
            shutil.rmtree(ck)


def cost() -> None:
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "lora_family_cost.py")], check=True, cwd=ROOT)


def readme(check: bool = False) -> int:
    text = README.read_text()
    if BEGIN not in text or END not in text:
        print(f"README.md has no {BEGIN} ... {END} block")
        return 1
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = head + BEGIN + "\n" + lf.readme_block() + "\n" + END + tail
    if check:
        if new != text:
            print("README.md's LoRA-family tables differ from the committed run folders; "
                  "run `python scripts/lora_family.py readme`")
            return 1
        print("README.md agrees with the committed run folders")
        return 0
    README.write_text(new)
    print("README.md: LoRA-family tables written")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["all", "tune", "compare", "cost", "readme"])
    p.add_argument("--check", action="store_true", help="readme: only check that README agrees")
    a = p.parse_args(argv)
    if a.step in ("all", "tune"):
        tune()
    if a.step in ("all", "compare"):
        compare()
    if a.step in ("all", "cost"):
        cost()
    if a.step in ("all", "readme"):
        return readme(a.check)
    return 0


if __name__ == "__main__":
    sys.exit(main())
