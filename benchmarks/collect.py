"""Assemble benchmarks/README.md from the tables the benchmarks wrote in results/.

    python benchmarks/collect.py
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
ORDER = ["decode", "augment", "prerelax", "generate", "validity", "rank", "dedup", "scale", "counts", "gpu"]
INTRO = """# Benchmarks

Each script measures legodask beside its baseline in the same run and writes
`results/<name>.json` and `results/<name>.md`; this page is assembled from the
latter by `python benchmarks/collect.py`.  Machine: 2 shared CPU cores, no GPU
(none was lent to this task).  During the runs other jobs shared the cores, so
rates per core are lower bounds; ratios are measured side by side and hold.

The GPU checks (batched pre-relaxation per minute, sampling against ctgan's
`sample` on the same GPU) are one prepared device run: `benchmarks/gpu.py`
(`prepare` and `wheels` here, `bash benchmarks/gpu.sh` there, `report` back
here, which writes `results/gpu.md`); it has not run on a GPU yet.
"""


def demote(text: str) -> str:
    """Each Markdown heading one level down, so that every benchmark is a section."""
    return "\n".join("#" + line if line.startswith("#") else line for line in text.splitlines())


def main() -> None:
    parts = [INTRO]
    for name in ORDER:
        files = sorted((HERE / "results").glob(f"{name}*.md"))
        if (HERE / "results" / f"{name}.md").exists():   # a full run supersedes --quick
            files = [f for f in files if not f.stem.endswith("-quick")]
        for f in files:
            text = f.read_text().strip()
            if text.startswith("## "):
                parts.append(text)
            elif text.startswith("# "):
                parts.append(demote(text))
            else:
                parts.append(f"## {f.stem}\n\n{text}")
    (HERE / "README.md").write_text("\n\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
