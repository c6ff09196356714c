"""``rnnkit predict RUN TEXT``: a trained run's prediction for one input.

Sentiment prints the label and its probability; forecasting reads recent
values (numbers separated by spaces or commas, at least the model's window
plus one) and prints the next ones; translation prints the beam-search
translation of a sentence; captioning captions an image file, or a strip of
held-out digits given as "419"; speech transcribes a WAV file, or digit words
that it synthesises with a held-out voice. TEXT ``-`` reads standard input.
TEXT must hold something besides spaces, at most 10,000 characters; a file
given as TEXT, at most 20 MB."""

from __future__ import annotations

from pathlib import Path

from rnnkit.cli import _shared

EPILOG = """examples:
  rnnkit predict runs/sentiment "This is not a good movie"
  rnnkit predict runs/co2 - < recent_weeks.txt
  rnnkit predict runs/translation "And God said, Let there be light"
  rnnkit predict runs/captioning 419
  rnnkit predict runs/speech recording.wav"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("predict", help="predict a label or the next values with a trained run",
                                   description=__doc__.split(":", 1)[1].strip(), epilog=EPILOG,
                                   formatter_class=_shared.formatter)  # fmt: skip
    parser.add_argument("run", metavar="RUN", help="a run folder written by `rnnkit train`")
    parser.add_argument("text", metavar="TEXT", help=f"a sentence, or values (at most {_shared.MAX_TEXT_CHARS:,} characters); - reads standard input")
    _shared.add_threads(parser)
    parser.set_defaults(handler=handle)


@_shared.reports_errors("predict")
def handle(args) -> int:
    if args.text != "-":
        _shared.check_text("TEXT", args.text)
        _shared.check_file_size("TEXT", args.text)
    task, config, module = _shared.open_run(args, "predict", "a task that predicts (sentiment, co2, stocks, translation, captioning, speech)", "try `rnnkit generate`")
    text = _shared.read_stdin("TEXT") if args.text == "-" else args.text
    print(module.predict(config, Path(args.run), text))
    return 0
