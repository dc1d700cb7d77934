"""HTML pages of the DEVELOPMENT-ONLY identity provider in :mod:`bastion.devidp`.

Plain server-rendered forms, no JavaScript, so that a test can drive them with
ordinary HTTP. Every value echoed into a page goes through :func:`html.escape`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

BANNER = "development identity provider — never use in production"

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem; }
.banner { background: #b00020; color: #fff; padding: .6rem 1rem; font-weight: bold; }
.user { border: 1px solid #ccc; border-radius: .4rem; padding: .6rem 1rem; margin: .8rem 0; }
.error { color: #b00020; }
code { font-size: 1.2em; }
"""


def page(title: str, body: str, *, status_note: str = "") -> str:
    """A whole HTML document: the dev-only banner, a title and an already-escaped body."""
    note = f'<p class="error">{escape(status_note)}</p>' if status_note else ""
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
        f'<div class="banner" role="alert">{escape(BANNER)}</div>'
        f"<h1>{escape(title)}</h1>{note}{body}</body></html>\n"
    )


def message_page(title: str, message: str) -> str:
    """A page that only says something (approved, denied, an error)."""
    return page(title, f"<p>{escape(message)}</p>")


def enter_code_page(error: str = "") -> str:
    """The device flow's first page: type the code shown in the terminal."""
    body = (
        '<form method="get" action="/device">'
        '<label>Code from your terminal: <input name="user_code" autocomplete="off" '
        'autofocus placeholder="ABCD-EFGH"></label> '
        '<button type="submit">Continue</button></form>'
    )
    return page("Sign in a device", body, status_note=error)


def pick_user_page(
    *,
    title: str,
    prompt: str,
    action: str,
    hidden: Mapping[str, str],
    users: Mapping[str, Sequence[str]],
) -> str:
    """Pick who to sign in as: one form per user, with that user's groups ticked.

    Every configured group is offered in every form, so a developer can try
    group combinations; the user's own groups start ticked.
    """
    all_groups = sorted({g for groups in users.values() for g in groups})
    hidden_inputs = "".join(
        f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in hidden.items()
    )
    forms = []
    for username, own in users.items():
        boxes = "".join(
            f'<label><input type="checkbox" name="groups" value="{escape(g)}"'
            f'{" checked" if g in own else ""}> {escape(g)}</label> '
            for g in all_groups
        )
        forms.append(
            f'<form class="user" method="post" action="{escape(action)}">{hidden_inputs}'
            f'<input type="hidden" name="username" value="{escape(username)}">'
            f"<h2>{escape(username)}</h2><p>Groups: {boxes or '(none configured)'}</p>"
            f'<button type="submit" name="action" value="approve">Approve as {escape(username)}</button>'
            "</form>"
        )
    deny = (
        f'<form method="post" action="{escape(action)}">{hidden_inputs}'
        '<button type="submit" name="action" value="deny">Deny</button></form>'
    )
    return page(title, f"<p>{escape(prompt)}</p>{''.join(forms)}{deny}")
