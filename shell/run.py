"""``run TARGET -- COMMAND``: one command on an SSH target, for scripts, agents and quick looks.

Everything after ``--`` goes to the target's shell verbatim, as OpenSSH's
``ssh host COMMAND`` sends it. The output streams back as it comes, stdin is
passed on, and the command's exit status becomes the command's own: a one-shot
``ssh bastion run web-1 -- "sh -c 'exit 7'"`` exits 7.
"""

from __future__ import annotations

from . import access
from .commands import EXIT_APPROVAL, EXIT_USAGE, Args, Result, _next_word, command
from .context import ShellContext

RUN_USAGE = "run TARGET -- COMMAND"


def split_run(rest: str) -> tuple[str, str] | None:
    """(target, command) from the words after ``run``; None when either is missing."""
    target, after = _next_word(rest)
    word, command_text = _next_word(after)
    if word != "--":
        command_text = after
    if not target or target.startswith("-") or not command_text.strip():
        return None
    return target, command_text.strip()


@command("run", RUN_USAGE, "Run one command on an SSH target: output streams back, stdin goes to it, "
         "and its exit status becomes yours.", completes_targets=True, raw=True)
async def _run(ctx: ShellContext, args: Args) -> Result:
    parsed = split_run(args.positional[0])
    if parsed is None:
        return Result(EXIT_USAGE, error=f"usage: {RUN_USAGE}")
    target, command_text = parsed
    outcome = await ctx.run_remote(target, command_text)
    if outcome.remote:  # the output is already with the user; a person is also told a failing status
        told = ctx.interactive and outcome.code != 0
        return Result(outcome.code, error=f"{target}: exit status {outcome.code}" if told else "")
    if outcome.code == EXIT_APPROVAL:
        return access.sql_refused(target, outcome)  # says how to ask for access
    return Result(outcome.code, error=outcome.message)
