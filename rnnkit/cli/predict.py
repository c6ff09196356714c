"""``rnnkit predict RUN TEXT``: a trained run's prediction for one input.

Sentiment prints the label and its probability; forecasting reads recent
values (numbers separated by spaces or commas, at least the model's window
plus one) and prints the next ones; translation prints the beam-search
translation of a sentence; captioning captions an image file, or a strip of
held-out digits given as "419"; speech transcribes a WAV file, or digit words
that it synthesises with a held-out voice. TEXT ``-`` reads standard input.
TEXT must hold something besides spaces, at most 10,000 characters; a file
given as TEXT, at most 20 MB.

With --file FILE instead of TEXT: one input per line (a sentence, a row of
values, a file name...), one prediction per line out, in order; the run's model
is read once and sentiment and translation go through it in batches. A blank
line is an error that names it; FILE is UTF-8, at most 20 MB."""

from __future__ import annotations

from pathlib import Path

from rnnkit.cli import _shared

EPILOG = """examples:
  rnnkit predict runs/sentiment "This is not a good movie"
  rnnkit predict runs/co2 - < recent_weeks.txt
  rnnkit predict runs/translation "And God said, Let there be light"
  rnnkit predict runs/captioning 419
  rnnkit predict runs/speech recording.wav
  rnnkit predict runs/sentiment --file reviews.txt > predictions.txt"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("predict", help="predict a label or the next values with a trained run",
                                   description=__doc__.split(":", 1)[1].strip(), epilog=EPILOG,
                                   formatter_class=_shared.formatter)  # fmt: skip
    parser.add_argument("run", metavar="RUN", help="a run folder written by `rnnkit train`")
    parser.add_argument("text", metavar="TEXT", nargs="?", help=f"a sentence, or values (at most {_shared.MAX_TEXT_CHARS:,} characters); - reads standard input")
    parser.add_argument("--file", metavar="FILE", help="one input per line; prints one prediction per line")
    _shared.add_threads(parser)
    parser.set_defaults(handler=handle)


@_shared.reports_errors("predict")
def handle(args) -> int:
    if (args.text is None) == (args.file is None):
        raise _shared.UsageError(f"TEXT/--file: expected exactly one of them, got {'both' if args.file else 'neither'}")
    if args.file is not None:
        return predict_file(args)
    if args.text != "-":
        _shared.check_text("TEXT", args.text)
        _shared.check_file_size("TEXT", args.text)
    task, config, module = _shared.open_run(args, "predict", "a task that predicts (sentiment, co2, stocks, translation, captioning, speech)", "try `rnnkit generate`")
    text = _shared.read_stdin("TEXT") if args.text == "-" else args.text
    print(module.predict(config, Path(args.run), text))
    return 0


def predict_file(args) -> int:
    from rnnkit.models import load_model
    from rnnkit.tasks import common

    _shared.check_file_size("--file", args.file)
    text = common.decode_text(common.read_bytes(args.file), args.file, "one input per line")
    # lines end at "\n" (or "\r\n") only: str.splitlines() also splits at \v, \f, \x1c-\x1e, \x85 and U+2028/2029,
    # which would give more predictions than the file has lines
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise common.DataError(f"--file {args.file}, line {number}: expected an input, got a blank line")
        if len(line) > _shared.MAX_TEXT_CHARS:
            raise common.DataError(f"--file {args.file}, line {number}: expected at most {_shared.MAX_TEXT_CHARS:,} characters, got {len(line):,}")
    task, config, module = _shared.open_run(args, "predict", "a task that predicts (sentiment, co2, stocks, translation, captioning, speech)", "try `rnnkit generate`")
    run = Path(args.run)
    if hasattr(module, "predict_batch"):
        predictions = module.predict_batch(config, run, lines)
    else:  # the model is read once, then each line predicted in turn
        loaded = load_model(run / "model.safetensors")
        predictions = []
        for number, line in enumerate(lines, 1):
            try:
                predictions.append(module.predict(config, run, line, loaded=loaded))
            except ValueError as error:
                raise common.DataError(f"--file {args.file}, line {number}: {error}") from None
    print("\n".join(predictions))
    return 0
