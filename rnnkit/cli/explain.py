"""``rnnkit explain RUN TEXT``: each word's contribution to a sentiment run's prediction (by occlusion), printed and drawn as a heat strip."""

from __future__ import annotations

from pathlib import Path

from rnnkit.cli import _shared


def register(subparsers) -> None:
    parser = subparsers.add_parser("explain", help="each word's contribution to a sentiment prediction",
                                   description=__doc__.split(":", 1)[1].strip(), formatter_class=_shared.formatter,
                                   epilog='example:\n  rnnkit explain runs/sentiment "This is not a good movie" --png not-good.png')  # fmt: skip
    parser.add_argument("run", metavar="RUN", help="a run folder written by `rnnkit train sentiment`")
    parser.add_argument("text", metavar="TEXT", help="a sentence")
    parser.add_argument("--png", default=None, metavar="PATH", help="where to draw the heat strip (default RUN/explain.png)")
    _shared.add_threads(parser)
    parser.set_defaults(handler=handle)


@_shared.reports_errors("explain")
def handle(args) -> int:
    from rnnkit.models import load_model

    png = Path(args.png) if args.png else Path(args.run) / "explain.png"
    if args.png is not None and (png.suffix.lower() != ".png" or png.is_dir()):  # checked before the work, not after it
        raise _shared.UsageError(f"--png: expected the path of a .png file, got {args.png!r}"
                                 f"{' (a folder)' if png.is_dir() else ''}")  # fmt: skip
    task, config, module = _shared.open_run(args, "explain", "a sentiment run", "explanations are for sentiment classifiers")
    model, extra = load_model(Path(args.run) / "model.safetensors")
    p, words = module.explain(model.eval(), args.text, extra["vocabulary"], config.data.max_length)
    print(f"{module.LABELS[p > 0.5]} (P(positive) = {p:.3f}); each word: P(positive) minus P(positive) without it")
    for w in words:
        print(f"  {w.word:20} {w.contribution:+.3f}{'' if w.known else '  (not in the vocabulary: read as <unk>)'}")
    module.plot_contributions(png, p, words)
    print(f"heat strip: {png}")
    return 0
