"""Pygments lexer for the bastion shell's command line."""

from __future__ import annotations

import re

from pygments.lexer import RegexLexer, bygroups
from pygments.token import Keyword, Name, Operator, String, Text, Whitespace


def command_lexer(command_names: list[str]) -> type[RegexLexer]:
    """A lexer class highlighting the given command names, options, quoted strings and words."""
    words = "|".join(re.escape(n) for n in sorted(command_names, key=len, reverse=True))

    class BastionLexer(RegexLexer):
        name = "bastion"
        tokens = {
            "root": [
                (rf"^(\s*)({words})\b", bygroups(Whitespace, Keyword)),
                (r"--?[A-Za-z][\w-]*", Operator),
                (r'"[^"]*"?|\'[^\']*\'?', String),
                (r"\s+", Whitespace),
                (r"[^\s]+", Name),
                (r".", Text),
            ],
        }

    return BastionLexer
