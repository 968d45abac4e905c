"""``llavakit data ...``: dataset tools (synthetic shapes-world generator, validation)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llavakit.cli import app, friendly_errors, out

data_app = typer.Typer(help="Data sets: generate shapes world, check a training file.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command()
@friendly_errors
def shapes(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write images/ and the split files to.")],
    train: Annotated[int, typer.Option(help="Training samples (one scene each).")] = 2000,
    val: Annotated[int, typer.Option(help="Validation samples.")] = 200,
    test: Annotated[int, typer.Option(help="Test samples (single questions, held-out combinations).")] = 500,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same data set.")] = 0,
    image_size: Annotated[int, typer.Option(help="Image side in pixels.")] = 160,
    families: Annotated[str, typer.Option(help="Comma-separated question families (e.g. caption for align).")] = (
        "color,shape,count,spatial,exists,read,caption"),
    multi_turn: Annotated[float, typer.Option(help="Share of train samples with 2-4 questions.")] = 0.5,
    heldout_share: Annotated[float, typer.Option(help="Share of test scenes with a held-out pair.")] = 0.6,
    text_captions: Annotated[int, typer.Option(help="Text-only caption samples naming every colour with every "
                                               "shape (text_captions.json; no image, so no held-out scene).")] = 0,
    family_weight: Annotated[list[str] | None, typer.Option(
        help="FAMILY=W: how often a family leads a train sample, relative to the others (default colour 1, "
             "shape 1, count 1.2, spatial 1.4, exists 1.2, read 1, caption 0.8); repeatable.")] = None,
    fonts: Annotated[Path | None, typer.Option(
        help="A folder of .ttf/.otf fonts words are also drawn in (train and val; the test split keeps the "
             "built-in font).")] = None,
    random_words: Annotated[float, typer.Option(
        help="Share of train/val words that are made up (3-7 letters), so a model learns letters, not a list.")] = 0.0,
    caption_sizes: Annotated[bool, typer.Option(
        help="Captions name each object's size (\"a small orange star\"), so the article never depends on "
             "the colour.")] = False,
    workers: Annotated[int, typer.Option(help="Worker processes (output does not depend on it).")] = 1,
    force: Annotated[bool, typer.Option(help="Write into a non-empty output directory.")] = False,
) -> None:
    """Generate the shapes-world visual-QA set (LLaVA JSON and HF messages JSONL)."""
    from llavakit.data.shapes import ShapesConfig, generate_shapes
    from llavakit.data.shapes.generate import font_files

    cfg = ShapesConfig(train=train, val=val, test=test, seed=seed, image_size=image_size, multi_turn=multi_turn,
                       heldout_share=heldout_share, text_captions=text_captions,
                       fonts=font_files(fonts) if fonts else (), random_words=random_words,
                       caption_sizes=caption_sizes,
                       family_weights=_parse_weights(family_weight or []),
                       families=tuple(f.strip() for f in families.split(",") if f.strip()))
    summary = generate_shapes(out_dir, cfg, workers=workers, force=force, progress=True)
    for split, info in summary["splits"].items():
        fams = ", ".join(f"{k} {v}" for k, v in sorted(info["families"].items()))
        out.print(f"{split:>5}: {info['samples']} samples, {info['questions']} questions "
                  f"({info['heldout_samples']} with held-out pairs) — {fams}")
    out.print(f"wrote {out_dir}/{{train,val,test}}.json (LLaVA) and .jsonl (HF messages), images/ and dataset.json")
    if text_captions:
        out.print(f"wrote {out_dir}/text_captions.json: {text_captions} text-only caption samples")


def _parse_weights(items: list[str]) -> tuple[tuple[str, float], ...]:
    """``["spatial=2.4", ...]`` -> ``(("spatial", 2.4), ...)``; a malformed item is a clear error."""
    from llavakit.errors import LlavakitError

    pairs = []
    for item in items:
        name, sep, value = item.partition("=")
        try:
            pairs.append((name.strip(), float(value)))
        except ValueError:
            sep = ""
        if not sep:
            raise LlavakitError(f"--family-weight expects FAMILY=NUMBER (e.g. spatial=2.4), got {item!r}")
    return tuple(pairs)


@data_app.command()
@friendly_errors
def check(
    path: Annotated[Path, typer.Argument(help="Data file (LLaVA JSON, HF messages JSON/JSONL) or a datasets dir.")],
    image_root: Annotated[Path | None, typer.Option(help="Folder relative image paths start from.")] = None,
    deep: Annotated[bool, typer.Option(help="Decode every image fully (slower).")] = False,
    skip_bad: Annotated[bool, typer.Option(help="Report bad samples as a warning instead of an error.")] = False,
) -> None:
    """Read and validate a training file the way `llavakit train` does, before any GPU time is spent."""
    import warnings
    from collections import Counter

    from llavakit.data import read_dataset, validate

    samples = read_dataset(path, image_root=image_root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        good = validate(samples, skip_bad=skip_bad, deep=deep)
    for w in caught:
        out.print(f"[yellow]warning:[/] {w.message}")
    turns = sum(sum(m["role"] == "assistant" for m in s.messages) for s in good)
    images = sum(len(s.images) for s in good)
    families = Counter(s.meta.get("family", "-") for s in good)
    out.print(f"{len(good)} usable samples of {len(samples)}: {turns} answers, {images} images, "
              f"{sum(not s.images for s in good)} text-only")
    if len(families) > 1:
        out.print("families: " + ", ".join(f"{k} {v}" for k, v in sorted(families.items())))
