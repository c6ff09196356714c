"""``rnnkit generate RUN``: sample from a trained language model: text (charlm), or note events written as a MIDI file and a piano roll (music).

The output is printed as it is drawn, token by token; Ctrl-C stops it (exit 130).
--length is at most 10,000 tokens, --prime at most 10,000 characters."""

from __future__ import annotations

import sys
from pathlib import Path

from rnnkit.cli import _shared


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="sample text or music from a trained language model",
                                   description=__doc__.split(":", 1)[1].strip(), formatter_class=_shared.formatter,
                                   epilog='examples:\n  rnnkit generate runs/charlm --prime "ROMEO:" --temperature 0.8 --length 500\n'
                                          '  rnnkit generate runs/music --prime "E5:1 D5:0.5" --length 64')  # fmt: skip
    parser.add_argument("run", metavar="RUN", help="a run folder written by `rnnkit train charlm` or `rnnkit train music`")
    parser.add_argument("--prime", default="\n",
                        help='text to start from (charlm), or note events such as "E5:1 D5:0.5" (music); default: a newline (music: none)')
    parser.add_argument("--temperature", type=float, default=0.8, help="below 1: safer text; above 1: wilder (default 0.8)")
    parser.add_argument("--length", type=int, default=500,
                        help=f"characters (charlm) or note events (music) to generate, 1 to {_shared.MAX_GENERATE_LENGTH:,} (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    _shared.add_threads(parser)
    parser.set_defaults(handler=handle)


@_shared.reports_errors("generate")
def handle(args) -> int:
    if not 1 <= args.length <= _shared.MAX_GENERATE_LENGTH:
        raise _shared.UsageError(f"--length: expected 1 to {_shared.MAX_GENERATE_LENGTH:,} tokens to generate, got {args.length:,}")
    if len(args.prime) > _shared.MAX_TEXT_CHARS:
        raise _shared.UsageError(f"--prime: expected at most {_shared.MAX_TEXT_CHARS:,} characters, got {len(args.prime):,}")
    task, config, module = _shared.open_run(args, "generate", "a language-model run (charlm, music)", "try `rnnkit predict`")
    wrote = False
    try:
        for piece in module.generate_stream(config, Path(args.run), args.prime, args.temperature, args.length, args.seed):
            sys.stdout.write(piece)
            sys.stdout.flush()
            wrote = True
    finally:
        if wrote:
            print(flush=True)  # end the line, also when Ctrl-C cut it short
    return 0
